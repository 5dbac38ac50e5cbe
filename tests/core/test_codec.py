"""Codecs: shapes, causality, and overlap chunk decoding equal to a whole decode."""

import json
from pathlib import Path

import pytest
import torch

from streamdit_core.codec import ChunkDecoder, CodecConfig, PixelCodec, VideoAutoencoder, seam_ratio


def _codec(seed=0, time_factor=2):
    torch.manual_seed(seed)
    return VideoAutoencoder(CodecConfig(width=16, time_factor=time_factor, latent_channels=8, space_factor=8)).eval()


def test_shapes_and_compression():
    codec = _codec()
    video = torch.rand(2, 3, 8, 64, 64)
    z = codec.encode(video)
    assert z.shape == (2, 8, 4, 8, 8)
    out = codec.decode(z)
    assert out.shape == video.shape and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match=r"multiple of 2"):
        codec.encode(torch.rand(1, 3, 7, 64, 64))
    with pytest.raises(ValueError, match=r"\[b, 3, T, H, W\]"):
        codec.encode(torch.rand(3, 8, 64, 64))


@pytest.mark.parametrize("space_factor,channels", [(4, 4), (8, 8)])
def test_space_factors(space_factor, channels):
    torch.manual_seed(0)
    codec = VideoAutoencoder(CodecConfig(width=16, latent_channels=channels, space_factor=space_factor)).eval()
    z = codec.encode(torch.rand(1, 3, 3, 64, 64))
    assert z.shape == (1, channels, 3, 64 // space_factor, 64 // space_factor)
    assert codec.decode(z).shape == (1, 3, 3, 64, 64)
    with pytest.raises(ValueError, match="space_factor must be 4 or 8"):
        VideoAutoencoder(CodecConfig(space_factor=2))


def test_decoder_is_causal_in_time():
    codec = _codec()
    z = torch.randn(1, 8, 6, 8, 8)
    later = z.clone()
    later[:, :, 4:] = torch.randn(1, 8, 2, 8, 8)  # change only the future
    a, b = codec.decode(z), codec.decode(later)
    assert torch.equal(a[:, :, :8], b[:, :, :8])
    assert not torch.equal(a[:, :, 8:], b[:, :, 8:])


@pytest.mark.parametrize("chunk,time_factor", [(1, 2), (2, 2), (3, 2), (2, 1)])
def test_overlap_chunk_decoding_equals_decoding_the_whole_stream(chunk, time_factor):
    codec = _codec(1, time_factor)
    z = torch.randn(2, 8, 9, 8, 8)
    whole = codec.decode(z)
    dec = ChunkDecoder(codec)
    parts = torch.cat([dec.decode(z[:, :, i:i + chunk]) for i in range(0, 9, chunk)], dim=2)
    assert torch.allclose(parts, whole, atol=1e-5)
    naive = ChunkDecoder(codec, overlap=False)
    cold = torch.cat([naive.decode(z[:, :, i:i + chunk]) for i in range(0, 9, chunk)], dim=2)
    assert not torch.allclose(cold, whole, atol=1e-3)  # the cold restarts really differ


def test_seam_ratio_sees_a_jump_at_chunk_boundaries():
    t = torch.arange(16, dtype=torch.float32)
    smooth = (t / 16).view(1, 1, 16, 1, 1).expand(1, 3, 16, 4, 4)
    assert seam_ratio(smooth, 4) == pytest.approx(1.0)
    seamed = smooth.clone()
    seamed[:, :, 4:] += 0.2 * (torch.arange(4, 16) // 4).view(1, 1, 12, 1, 1)
    assert seam_ratio(seamed, 4) > 3


def test_pixel_codec_round_trip():
    video = torch.rand(1, 3, 4, 16, 16)
    codec = PixelCodec()
    assert torch.allclose(codec.decode(codec.encode(video)), video, atol=1e-6)


def test_calibrate_normalises_latents():
    codec = _codec()
    video = torch.rand(4, 3, 8, 64, 64)
    codec.calibrate(video)
    z = codec.encode(video)
    assert z.mean(dim=(0, 2, 3, 4)).abs().max() < 1e-4
    assert torch.allclose(z.std(dim=(0, 2, 3, 4)), torch.ones(8), atol=1e-3)


@pytest.mark.parametrize("space_factor", [4, 8])
def test_a_wrapping_codec_treats_the_frame_as_a_torus(space_factor):
    video = torch.rand(1, 3, 2, 64, 64)
    shift = 3 * space_factor  # whole latent cells, across the border
    for wrap in (True, False):
        torch.manual_seed(0)
        codec = VideoAutoencoder(CodecConfig(width=16, space_factor=space_factor, latent_channels=4, wrap=wrap)).eval()
        with torch.no_grad():
            z, z_rolled = codec.encode(video), codec.encode(torch.roll(video, shift, dims=4))
            out, out_rolled = codec.decode(z), codec.decode(torch.roll(z, 3, dims=4))
        same = torch.allclose(torch.roll(z, 3, dims=4), z_rolled, atol=1e-5) and \
            torch.allclose(torch.roll(out, shift, dims=4), out_rolled, atol=1e-5)
        assert same == wrap  # zero padding makes the borders special


def _decoder_state(codec):
    return {k: v.clone() for k, v in codec.state_dict().items() if not k.startswith("encoder.") and k not in ("shift", "scale")}


def test_refining_a_codec_file_keeps_its_latent_space_and_adds_up_its_steps(tmp_path):
    from streamdit_core.checkpoint import file_metadata, load_codec, save_checkpoint
    from streamdit_core.recipes import refine_codec
    from streamdit_core.train import CodecTrainConfig

    codec = VideoAutoencoder(CodecConfig(width=16, wrap=True))
    with torch.no_grad():
        codec.shift.fill_(0.5), codec.scale.fill_(2.0)  # a calibrated codec's normalisation
    record = {"decoder_refined_steps": "10", "decoder_refined_seconds": "100.0", "note": "kept"}
    source = save_checkpoint(codec, tmp_path / "codec.safetensors", record)
    before = source.read_bytes()
    config = CodecTrainConfig(steps=2, batch_size=2, pool=4, check_clips=2, outline_weight=5.0, halo_weight=3.0,
                              latent_noise=0.2)
    out = refine_codec(source, tmp_path / "refined.safetensors", config, progress=False, log=lambda _: None)
    assert source.read_bytes() == before  # the input is left as it was
    refined = load_codec(out)
    video = torch.rand(1, 3, 2, 64, 64)
    with torch.no_grad():
        assert torch.equal(refined.encode(video), codec.encode(video))  # models trained on it still fit
        assert not torch.equal(refined.decode(codec.encode(video)), codec.decode(codec.encode(video)))
    meta = file_metadata(out)
    assert meta["decoder_refined_steps"] == "12" and meta["note"] == "kept"
    settings = json.loads(meta["last_refinement"])
    assert (settings["outline_weight"], settings["halo_weight"], settings["latent_noise"]) == (5.0, 3.0, 0.2)
    assert abs(float(meta["decoder_refined_seconds"]) - (100.0 + settings["seconds"])) < 0.11  # the seconds add up too


def test_a_refinement_that_makes_the_codec_worse_never_replaces_it(tmp_path):
    import shutil

    from streamdit_core.checkpoint import file_metadata, read_metadata
    from streamdit_core.pipeline import EMBEDDED_MODELS
    from streamdit_core.recipes import refine_codec
    from streamdit_core.train import CodecTrainConfig

    model = EMBEDDED_MODELS["embedded"]
    codec = Path(shutil.copy(model.parent / read_metadata(model)["codec"], tmp_path / "codec.safetensors"))
    before = codec.read_bytes()
    lines = []
    config = CodecTrainConfig(steps=1, batch_size=2, pool=4, check_clips=4, lr=1e-2)  # one big first Adam step
    out = refine_codec(codec, codec, config, progress=False, log=lines.append)
    assert codec.read_bytes() == before and out == tmp_path / "codec-refined.safetensors" and out.is_file()
    assert any("made the reconstruction worse" in line for line in lines)
    assert file_metadata(out)["decoder_refined_steps"] == str(int(file_metadata(codec)["decoder_refined_steps"]) + 1)


def test_the_outline_weight_changes_what_a_codec_learns():
    from streamdit_core.train import CodecTrainConfig, train_codec
    from streamdit_core.world import World

    states = []
    for weight in (0.0, 0.0, 50.0):
        torch.manual_seed(0)
        codec = VideoAutoencoder(CodecConfig(width=16))
        train_codec(codec, World(), CodecTrainConfig(steps=2, batch_size=2, pool=4, check_clips=2, outline_weight=weight),
                    progress=False, decoder_only=True)
        states.append(_decoder_state(codec))
    same = all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    differs = any(not torch.equal(states[0][k], states[2][k]) for k in states[0])
    assert same and differs


def test_outline_contrast_weighs_a_faint_outline_as_much_as_a_clear_one_in_the_shape_reading():
    from streamdit_core.train import codec_pixel_weight
    from streamdit_core.world import BACKGROUNDS, COLORS, Scene, World

    world = World()
    faint, clear = Scene("purple", "square", "right", "gray"), Scene("yellow", "square", "right", "black")
    # the same square on the same path: only the colors differ
    x = torch.stack([world.render(s, 2, torch.Generator().manual_seed(3)).frames for s in (faint, clear)]).transpose(1, 2)
    contrast = [torch.tensor(COLORS[s.color]).sub(torch.tensor(BACKGROUNDS[s.background])).norm() for s in (faint, clear)]
    plain = codec_pixel_weight(x, outline_weight=20.0)
    even = codec_pixel_weight(x, outline_weight=20.0, outline_contrast=True)
    ring = plain > 10  # the outline's pixels: 1 (+9 inside) + 20
    assert torch.equal(ring[0], ring[1]) and ring.any()
    assert torch.equal(plain[~ring], even[~ring])  # the subject's 10x and the background's 1x stay
    extra = [float((even[i][ring[i]] - plain[i][ring[i]] + 20).mean()) for i in range(2)]  # what weighs the ring
    assert extra[0] / extra[1] == pytest.approx(float(contrast[1] / contrast[0]) ** 2, rel=0.02)
    assert (extra[0] + extra[1]) / 2 == pytest.approx(20.0, rel=0.02)  # the mean stays the outline weight


def test_the_halo_weight_falls_on_the_background_three_to_six_pixels_from_the_subject():
    from streamdit_core.train import codec_pixel_weight
    from streamdit_core.world import Scene, World

    frame = World().render(Scene("red", "square", "up", "white"), 1, torch.Generator().manual_seed(3)).frames[0]
    rows = torch.nonzero((frame - frame[:, :1, :1]).norm(dim=0) > 0.1)[:, 0].float().mean()
    frame = frame.roll(-int(rows), dims=1)  # the square across the frame's top border: the halo must wrap with it
    x = frame[None, :, None]  # [1, 3, 1, H, W]
    plain = codec_pixel_weight(x)[0, 0, 0]
    halo = codec_pixel_weight(x, halo_weight=5.0)[0, 0, 0] - plain
    subject = plain == 10
    assert subject.any() and set(halo.unique().tolist()) == {0.0, 5.0}
    ys, xs = torch.nonzero(subject, as_tuple=True)
    H, W = subject.shape
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    # each pixel's distance (square neighbourhood, on the torus) to the nearest subject pixel
    dy = (yy[..., None] - ys).abs()
    dx = (xx[..., None] - xs).abs()
    dist = torch.maximum(torch.minimum(dy, H - dy), torch.minimum(dx, W - dx)).amin(-1)
    assert torch.equal(halo == 5.0, (dist >= 3) & (dist <= 6))
    assert bool(subject[0].any() & subject[-1].any())  # the subject does cross the border


def test_the_refine_codec_command_names_a_bad_input(tmp_path, capsys):
    from streamdit_core.cli import main

    with pytest.raises(SystemExit, match="--outline-weight must be 0 or more"):
        main(["refine-codec", str(tmp_path / "codec.safetensors"), "--out", str(tmp_path / "x.safetensors"),
              "--outline-weight", "-1"])
    with pytest.raises(SystemExit, match="--outline-contrast .* give --outline-weight"):
        main(["refine-codec", str(tmp_path / "codec.safetensors"), "--out", str(tmp_path / "x.safetensors"),
              "--outline-contrast"])
    with pytest.raises(SystemExit, match="--halo-weight must be 0 or more"):
        main(["refine-codec", str(tmp_path / "codec.safetensors"), "--out", str(tmp_path / "x.safetensors"),
              "--halo-weight", "-2"])
    with pytest.raises(SystemExit, match="--latent-noise must be between 0 and 1"):
        main(["refine-codec", str(tmp_path / "codec.safetensors"), "--out", str(tmp_path / "x.safetensors"),
              "--latent-noise", "3"])
    with pytest.raises(SystemExit, match="error: .*missing.safetensors"):
        main(["refine-codec", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x.safetensors")])
