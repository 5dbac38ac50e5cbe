"""Wan 2.1's VAE as a codec: the streaming time rule, training a Wan-architecture VAE on clips,
its latent calibration and the ComfyUI layout it is written in. Tiny random VAEs, no downloads."""

import pytest
import torch

pytest.importorskip("diffusers")

from streamdit_core.train import CodecTrainConfig, train_codec  # noqa: E402
from streamdit_core.wan_vae import (COMFY_VAE_FILE, comfy_vae_state_dict, load_wan_vae, new_wan_vae,  # noqa: E402
                                    save_wan_vae, tiny_wan_vae_config)


def test_the_wan_vae_makes_one_latent_per_four_frames_and_decodes_chunks_behind_their_context():
    torch.manual_seed(0)
    vae = load_wan_vae(tiny_wan_vae_config())
    assert (vae.latent_channels, vae.space_factor, vae.time_factor) == (16, 8, 4)
    video = torch.rand(1, 3, 12, 32, 32, generator=torch.Generator().manual_seed(0))
    z = vae.encode(video)
    assert z.shape == (1, 16, 3, 4, 4) and torch.isfinite(z).all()
    whole = vae.decode(z)
    assert whole.shape == (1, 3, 12, 32, 32) and 0 <= float(whole.min()) and float(whole.max()) <= 1
    # a chunk decoded behind the latents before it gives just its own frames (the frame rule
    # itself is checked on a stand-in VAE in tests/nodes/test_wan_codec.py)
    tail = vae.decode_with_context(z[:, :, :2], z[:, :, 2:])
    assert tail.shape == (1, 3, 4, 32, 32) and torch.isfinite(tail).all()
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode(video[:, :, :6])


def test_comfyui_names_follow_the_original_wan_layout():
    vae = new_wan_vae(base_dim=8)
    state = comfy_vae_state_dict(vae)
    assert len(state) == len(vae.vae.state_dict())  # one name each, none lost
    # what ComfyUI's Load VAE detects a Wan 2.1 VAE by and reads its width and channels from
    assert "decoder.middle.0.residual.0.gamma" in state
    assert "decoder.upsamples.0.upsamples.0.residual.2.weight" not in state  # (that would be Wan 2.2)
    assert state["decoder.head.0.gamma"].shape[0] == 8 and state["encoder.conv1.weight"].shape[1] == 3
    # the original decoder is one flat list, four levels of three resnets with an upsampler
    # between levels: upsamplers at 3, 7 and 11 (time upsampling at 3 and 7), the channel
    # change at the first resnet of level 1
    ups = {k.split(".")[2] + "." + k.split(".")[3] for k in state if k.startswith("decoder.upsamples.")}
    assert {u for u in ups if u.endswith(("resample", "time_conv"))} == {
        "3.resample", "7.resample", "11.resample", "3.time_conv", "7.time_conv"}
    assert state["decoder.upsamples.4.shortcut.weight"].shape[:2] == (32, 16)
    assert {k.split(".")[2] for k in state if k.startswith("decoder.upsamples.")} == {str(i) for i in range(15)}
    assert state["decoder.middle.1.to_qkv.weight"].shape == (96, 32, 1, 1)  # the attention between resnets
    assert state["conv1.weight"].shape[:2] == (32, 32) and state["conv2.weight"].shape[:2] == (16, 16)
    diffusers = vae.vae.state_dict()
    assert torch.equal(state["decoder.upsamples.13.residual.6.weight"], diffusers["decoder.up_blocks.3.resnets.1.conv2.weight"])
    assert torch.equal(state["encoder.downsamples.5.time_conv.bias"], diffusers["encoder.down_blocks.5.time_conv.bias"])


def test_calibration_gives_unit_latents_and_leaves_every_decoded_frame_as_it_was():
    torch.manual_seed(0)
    vae = new_wan_vae(base_dim=8)
    video = torch.rand(3, 3, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = vae.decode(vae.encode(video))
        assert abs(float(vae.encode(video).std()) - 1) > 0.5  # a random VAE's latents are far from unit scale
        vae.calibrate(video)
        z = vae.encode(video)
        after = vae.decode(z)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3, 4)), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3, 4)), torch.ones(16), atol=1e-3, rtol=0)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)


class _Squares:
    """Clips of a white square on black moving one pixel per frame, 16 x 16 (the ``batch`` a
    codec trainer reads)."""

    def batch(self, n, frames, gen):
        video = torch.zeros(n, frames, 3, 16, 16)
        for i in range(n):
            y, x = torch.randint(0, 16, (2,), generator=gen).tolist()
            for t in range(frames):
                video[i, t, :, y % 12: y % 12 + 4, (x + t) % 12: (x + t) % 12 + 4] = 1
        return video, None


def test_a_pixel_clamped_on_the_wrong_side_still_gets_a_gradient():
    # diffusers clamps decoded pixels to -1..1; without a gradient there, a VAE in training that
    # once decodes all black never recovers (seen: the loss stuck at the black frame's)
    vae = new_wan_vae(base_dim=8)
    with torch.no_grad():
        vae.vae.decoder.conv_out.bias.fill_(-20.0)  # every pixel far below black
    white = torch.ones(1, 3, 4, 16, 16)
    (vae.decode_raw(vae.encode_raw(white)) - white).square().mean().backward()
    assert float(vae.vae.decoder.conv_out.bias.grad.abs().min()) > 0


def test_the_codec_trainer_trains_on_clips_of_the_asked_length_and_refuses_one_the_codec_cannot_take():
    lengths = []

    class Counted(_Squares):
        def batch(self, n, frames, gen):
            lengths.append(frames)
            return super().batch(n, frames, gen)

    vae = new_wan_vae(base_dim=8)
    train_codec(vae, Counted(), CodecTrainConfig(steps=1, batch_size=1, pool=2, check_clips=1, clip_frames=20),
                progress=False)
    assert lengths[0] == 20  # the training pool (the check clips after it are 32 frames, as before)
    lengths.clear()
    train_codec(vae, Counted(), CodecTrainConfig(steps=1, batch_size=1, pool=2, check_clips=1), progress=False)
    assert lengths[0] == 4 * (vae.context + 1)  # the default: the shortest clip with the causal context
    for bad in (18, 8):  # not a multiple of 4; shorter than the context needs
        with pytest.raises(ValueError, match=f"clip_frames={bad}.*multiple of 4 frames, at least 12"):
            train_codec(vae, Counted(), CodecTrainConfig(steps=1, pool=2, clip_frames=bad), progress=False)


def test_a_wan_architecture_vae_learns_clips_and_is_written_for_diffusers_and_comfyui(tmp_path):
    from safetensors import safe_open

    torch.manual_seed(0)
    vae = new_wan_vae(base_dim=8)
    clips, _ = _Squares().batch(8, 32, torch.Generator().manual_seed(9))
    clips = clips.transpose(1, 2)
    with torch.no_grad():
        untrained = float((vae.decode(vae.encode(clips)) - clips).square().mean())
    mse = train_codec(vae, _Squares(), CodecTrainConfig(steps=40, batch_size=2, lr=1e-2, pool=8, check_clips=8),
                      progress=False)
    assert mse < 0.8 * untrained, (mse, untrained)
    path = save_wan_vae(vae, tmp_path, {"steps": "30"})
    assert path == tmp_path / COMFY_VAE_FILE
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "comfyui-wan-vae" and "decoder.head.0.gamma" in f.keys()
    again = load_wan_vae(tmp_path)  # the diffusers folder: what train --init wan:FOLDER reads
    with torch.no_grad():
        torch.testing.assert_close(again.decode(again.encode(clips)), vae.decode(vae.encode(clips)))
