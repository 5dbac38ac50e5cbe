"""Streaming ComfyUI's own Wan model classes (opt-in: needs a ComfyUI checkout in COMFYUI_DIR).

A small randomly initialised ``comfy.ldm.wan.model.WanModel`` is saved and loaded through
ComfyUI's native diffusion-model loader, and a small random Wan 2.1 VAE through its VAE class;
nothing is downloaded. The text encoder is a stand-in with ComfyUI's CLIP interface (umt5_xxl is
11 GB); it gives every prompt fixed token states of Wan's shape ``[1, 512, 4096]``.

    COMFYUI_DIR=~/ComfyUI ~/ComfyUI/venv/bin/python -m pytest -q tests/host
"""

from __future__ import annotations

import os
import sys
import zlib
from types import SimpleNamespace

import pytest
import torch

from streamdit_core import Partition
from streamdit_core.guidance import Guided
from streamdit_core.schedule import frame_sigma_table
from streamdit_core.stream import Streamer

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR, reason="Wan adapter tests: set COMFYUI_DIR to a ComfyUI checkout (with its requirements "
                            "installed in this Python) to run them")
NEGATIVE = "blurry, static"


class StandInClip:
    """ComfyUI's CLIP interface (tokenize, encode_from_tokens_scheduled) with fixed random
    token states per prompt: real tokens, then zero padding to 512, as Wan's umt5 gives."""

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        g = torch.Generator().manual_seed(zlib.crc32(tokens.encode()))
        cond = torch.zeros(1, 512, 4096)
        n = 1 + len(tokens.split())
        cond[:, :n] = torch.randn(1, n, 4096, generator=g)
        return [[cond, {"pooled_output": None}]]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    if COMFYUI_DIR not in sys.path:
        sys.path.append(COMFYUI_DIR)  # after the repository: its nodes.py must not shadow the pack
    try:
        from comfy.cli_args import args
    except ImportError as err:
        pytest.skip(f"cannot import ComfyUI from COMFYUI_DIR={COMFYUI_DIR}: {err}")
    args.cpu = True  # before model_management is imported
    import comfy.ldm.wan.model
    import comfy.ldm.wan.vae
    import comfy.model_management  # noqa: F401  (nodes.host finds ComfyUI through it)
    import comfy.ops
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import comfy.utils
    from safetensors.torch import save_file

    base = tmp_path_factory.mktemp("wan")
    torch.manual_seed(0)
    net = comfy.ldm.wan.model.WanModel(model_type="t2v", patch_size=(1, 2, 2), dim=128, ffn_dim=256, num_heads=1,
                                       num_layers=2, in_dim=16, out_dim=16, text_dim=4096, freq_dim=256,
                                       operations=comfy.ops.disable_weight_init)
    # random weights everywhere, the zero-initialised modulation and head included
    save_file({k: torch.randn_like(v) * 0.05 for k, v in net.state_dict().items()}, str(base / "tiny_wan.safetensors"))
    model = comfy.sd.load_diffusion_model(str(base / "tiny_wan.safetensors"))  # the native loader
    vae_net = comfy.ldm.wan.vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                       temperal_downsample=[False, True, True], dropout=0.0)
    save_file({k: torch.randn_like(v) * 0.1 for k, v in vae_net.state_dict().items()}, str(base / "tiny_vae.safetensors"))
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(base / "tiny_vae.safetensors")))
    return SimpleNamespace(model=model, vae=vae, clip=StandInClip(), sample=comfy.sample, samplers=comfy.samplers)


def _pipe(comfy, **kw):
    from nodes.wan import comfy_pipeline

    return comfy_pipeline(comfy.model, comfy.clip, comfy.vae, **{"width": 64, "height": 64, "buffer_frames": 4, **kw})


def test_the_adapter_equals_the_models_own_prediction_at_a_uniform_sigma(comfy):
    pipe = _pipe(comfy, guidance=1.0)
    text = pipe.encode(["a cat walking in the snow"])
    x = torch.randn(2, 16, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for s in (0.9, 0.35):
        v = pipe.velocity(x, torch.full((2, 4), s), text)
        denoised = comfy.model.model.apply_model(x, torch.full((2,), s), c_crossattn=text.tokens.expand(2, -1, -1))
        assert v.shape == x.shape and v.dtype == torch.float32
        torch.testing.assert_close(x - s * v, denoised, rtol=1e-5, atol=1e-5)
    assert pipe.model.geometry.warp.value == comfy.model.model.model_sampling.shift == 8.0  # Wan's shift


def test_a_sigma_per_frame_reaches_the_model_per_frame(comfy):
    pipe = _pipe(comfy, guidance=1.0)
    dm = comfy.model.model.diffusion_model
    seen = {}
    hooks = [dm.time_projection.register_forward_hook(lambda m, i, o: seen.__setitem__("e0", o.detach())),
             dm.time_embedding.register_forward_hook(lambda m, i, o: seen.__setitem__("e", o.detach()))]
    try:
        text = pipe.encode(["a cat"])
        x = torch.randn(1, 16, 4, 8, 8)
        pipe.velocity(x, torch.tensor([[0.1, 0.4, 0.7, 1.0]]), text)
        ramp = seen["e0"].reshape(1, 4, -1)  # [B, F, 6 dim]: the modulation of each frame
        pipe.velocity(x, torch.full((1, 4), 0.4), text)
        flat = seen["e0"].reshape(1, 4, -1)
    finally:
        for h in hooks:
            h.remove()
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(ramp[0, i], ramp[0, j]), f"frames {i} and {j} got the same modulation"
        assert torch.equal(flat[0, i], flat[0, 0])
    torch.testing.assert_close(ramp[0, 1], flat[0, 1])  # frame 1 has sigma 0.4 in both calls
    # per-frame prompts (a per-chunk switch): each frame takes the output of its own prompt
    from streamdit_core.conditioning import FrameText

    cat, dog = pipe.encode(["a cat"]), pipe.encode(["a dog"])
    sigma = torch.tensor([[0.1, 0.4, 0.7, 1.0]])
    both = pipe.velocity(x, sigma, FrameText((cat, dog), torch.tensor([0, 0, 1, 1])))
    torch.testing.assert_close(both[:, :, :2], pipe.velocity(x, sigma, cat)[:, :, :2])
    torch.testing.assert_close(both[:, :, 2:], pipe.velocity(x, sigma, dog)[:, :, 2:])


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_the_uniform_partition_reproduces_comfyuis_euler_sampling(comfy, guidance):
    pipe = _pipe(comfy, guidance=guidance, negative_prompt=NEGATIVE)
    P = Partition.uniform(4, 6)  # every frame at one sigma: ordinary text-to-video, 6 Euler steps
    prompt = "a red fox running through a forest"
    model = pipe.velocity if guidance == 1.0 else Guided(pipe.velocity, guidance)
    stream = Streamer(model, P, (16, 8, 8), text=pipe.encode([prompt]), seed=5, device=pipe.device)
    noise = stream.state.x.clone()  # [1, 16, 4, 8, 8] at sigma 1
    ours = None
    while ours is None:
        ours = stream.step()
    assert stream.state.calls == 6
    sigmas = frame_sigma_table(P, pipe.geometry.warp)[:, 0].contiguous()  # [7]: 1 ... 0
    assert sigmas[0] == 1 and sigmas[-1] == 0
    cond = [[comfy.clip.encode_from_tokens_scheduled(prompt)[0][0], {}]]
    uncond = [[comfy.clip.encode_from_tokens_scheduled(NEGATIVE)[0][0], {}]]
    sampler = comfy.samplers.sampler_object("euler")  # what SamplerCustom runs
    latent = torch.zeros_like(noise)
    theirs = comfy.sample.sample_custom(comfy.model, noise, guidance, sampler, sigmas, cond, uncond, latent,
                                        disable_pbar=True, seed=5)
    fmt = comfy.model.model.latent_format
    torch.testing.assert_close(fmt.process_out(ours.latents), theirs, rtol=1e-4, atol=1e-4)


def test_chunk_decoding_follows_the_first_frame_rule_and_shrinks_seams_with_context(comfy):
    from streamdit_core.codec import ChunkDecoder

    z = torch.randn(1, 16, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    errors = {}
    for context in (0, 2, 4):
        pipe = _pipe(comfy, context=context)
        whole = pipe.codec.decode(z)  # the 8 latents decoded at once: 32 frames
        assert whole.shape == (1, 3, 32, 64, 64) and 0 <= float(whole.min()) and float(whole.max()) <= 1
        decoder = ChunkDecoder(pipe.codec)
        chunked = torch.cat([decoder.decode(z[:, :, i:i + 2]) for i in range(0, 8, 2)], 2)  # c = 2
        assert chunked.shape == whole.shape
        torch.testing.assert_close(chunked[:, :, :8], whole[:, :, :8])  # the first chunk is the clip's start
        errors[context] = float((chunked - whole).abs().mean())
    # measured with this random VAE: 0.0179 (chunks alone), 0.0116 (2 latents of context), 0.0051 (4)
    assert errors[4] < 0.5 * errors[0] and errors[2] < 0.8 * errors[0], errors
    # encoding: frames 4i..4i+3 make latent i, and the round trip keeps the frame count
    latents = pipe.codec.encode(whole)
    assert latents.shape == (1, 16, 8, 8, 8)
    assert pipe.codec.decode(latents).shape == whole.shape


def test_a_c2_n4_stream_runs_through_the_nodes(comfy):
    from helpers import with_node_id
    from nodes import node_classes

    NODES = {name: with_node_id(cls, "5") for name, cls in node_classes().items()}
    (pipe,) = NODES["StreamDiTWanModel"].execute(model=comfy.model, clip=comfy.clip, vae=comfy.vae, width=64, height=64,
                                                 buffer_frames=8, guidance=3.0, negative_prompt=NEGATIVE,
                                                 shift=0.0, fps=16)
    (prompts,) = NODES["StreamDiTPromptSchedule"].execute("0s: a cat\n1s: a dog")
    stream = dict(seed=0, guidance=0.0, switch_mode="chunk", blend_calls=4, reference_frames=0, chunks=4,
                  chunk_frames=2, steps_per_chunk=1)
    calls = pipe.model.calls
    frames, fps = NODES["StreamDiTSampler"].execute(pipe, prompts, seconds=2.0, warm_start=True, **stream)
    assert fps == 16.0 and frames.shape == (32, 64, 64, 3) and torch.isfinite(frames).all()
    assert pipe.model.calls > calls
    again, _ = NODES["StreamDiTVideoToVideo"].execute(pipe, frames[:16], prompts, strength=0.6, **stream)
    assert again.shape == (16, 64, 64, 3) and torch.isfinite(again).all()  # VAE encoding, then the stream


def test_models_it_cannot_stream_are_refused_with_the_fix(comfy):
    from nodes.wan import comfy_pipeline

    with pytest.raises(ValueError, match="not a ComfyUI video diffusion model"):
        comfy_pipeline(object(), comfy.clip, comfy.vae)
    with pytest.raises(ValueError, match="multiples of 16"):
        comfy_pipeline(comfy.model, comfy.clip, comfy.vae, width=100, height=64)
    with pytest.raises(ValueError, match="not a Wan 2.1 video VAE"):
        comfy_pipeline(comfy.model, comfy.clip, SimpleNamespace(latent_channels=4, upscale_index_formula=(1, 8, 8)))


def test_the_example_wan_workflow_runs_with_small_models_in_place_of_its_files(comfy):
    from nodes import node_classes
    from workflow_tools import MODEL_FILES, ROOT, load, object_info, run_prompt, to_api

    asked, saved = {}, []

    def loader(node: str, kind: str):  # ComfyUI's loader, handing over the small model instead of the file
        class Loader:
            FUNCTION = "load"

            def load(self, **inputs):
                asked[node] = inputs
                return (getattr(comfy, kind),)
        return Loader

    class CreateVideo:
        FUNCTION = "run"

        def run(self, images, fps):
            return ((images, fps),)

    class SaveVideo:
        FUNCTION = "run"

        def run(self, video, **options):
            saved.append(video)
            return ()

    classes = {**node_classes(), "UNETLoader": loader("UNETLoader", "model"),
               "CLIPLoader": loader("CLIPLoader", "clip"), "VAELoader": loader("VAELoader", "vae"),
               "CreateVideo": CreateVideo, "SaveVideo": SaveVideo}
    prompt = to_api(load(ROOT / "workflows" / "wan21_t2v_1_3b_stream.json"), object_info(node_classes()))
    run_prompt(prompt, {"StreamDiTWanModel": {"width": 64, "height": 64},
                        "StreamDiTSampler": {"seconds": 1.0, "steps_per_chunk": 1}}, classes)
    files = MODEL_FILES["wan21_t2v_1_3b_stream"]
    assert asked["UNETLoader"]["unet_name"] == files["UNETLoader"] and asked["CLIPLoader"]["type"] == "wan"
    assert asked["CLIPLoader"]["clip_name"] == files["CLIPLoader"] and asked["VAELoader"]["vae_name"] == files["VAELoader"]
    ((images, fps),) = saved
    assert images.shape == (16, 64, 64, 3) and fps == 16.0 and torch.isfinite(images).all()
