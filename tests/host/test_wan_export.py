"""A Wan model adapted here loads through ComfyUI's own loaders (opt-in: needs COMFYUI_DIR and,
in this Python, ComfyUI's requirements plus diffusers and peft).

A tiny random diffusers Wan transformer is exported with :func:`streamdit_core.wan.comfy_state_dict`
(full weights) and :func:`~streamdit_core.wan.lora_state_dict` (LoRA adapters); ComfyUI's Load
Diffusion Model and Load LoRA read them, and the StreamDiT Wan node's prediction through
ComfyUI equals the diffusers model's on the same input, per-frame sigmas included.

    COMFYUI_DIR=~/ComfyUI ~/ComfyUI/venv/bin/python -m pytest -q tests/host
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run the host tests")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from streamdit_core import Geometry, SigmaWarp, TextEmbedding  # noqa: E402
from streamdit_core.wan import add_lora, comfy_state_dict, load_wan, lora_state_dict, tiny_wan_config  # noqa: E402

SIZE, FRAMES = (8, 8), 4


def _config():
    """Tiny, but with what ComfyUI takes as Wan's constants: a head width of 128 (it reads the head
    count as the width over 128), umT5's 4096-wide text and a 256-wide time embedding."""
    return tiny_wan_config(num_attention_heads=1, attention_head_dim=128, ffn_dim=256, text_dim=4096, freq_dim=256)


@pytest.fixture(scope="module")
def comfy():
    if COMFYUI_DIR not in sys.path:
        sys.path.append(COMFYUI_DIR)
    try:
        from comfy.cli_args import args
    except ImportError as err:
        pytest.skip(f"cannot import ComfyUI from COMFYUI_DIR={COMFYUI_DIR}: {err}")
    args.cpu = True
    import comfy.model_management  # noqa: F401
    import comfy.sd
    import comfy.utils

    return comfy


def _randomised(wan):
    """Random weights everywhere (diffusers zero-initialises nothing that matters here, but the
    modulation tables are small): a strong test of every key's meaning."""
    with torch.no_grad():
        for p in wan.transformer.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return wan


def _through_comfyui(comfy, path, lora=None):
    from nodes.wan import ComfyVelocity

    patcher = comfy.sd.load_diffusion_model(str(path))
    if lora is not None:
        patcher, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0.0)
    geometry = Geometry(FRAMES, 16, SIZE, 2, SigmaWarp.shift(3.0))
    return ComfyVelocity(patcher, geometry)


def _inputs():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 16, FRAMES, *SIZE, generator=g)
    sigma = torch.tensor([[0.1, 0.4, 0.7, 0.95]])
    text = TextEmbedding(torch.randn(1, 6, 4096, generator=g))
    return x, sigma, text


def test_the_exported_weights_load_in_comfyui_and_predict_what_diffusers_does(comfy, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    wan = _randomised(load_wan(_config(), FRAMES, SIZE)).eval()
    save_file(comfy_state_dict(wan), str(tmp_path / "wan.safetensors"))
    ours = _through_comfyui(comfy, tmp_path / "wan.safetensors")
    x, sigma, text = _inputs()
    with torch.no_grad():
        expected = wan(x, sigma, text)
        got = ours(x, sigma, text)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_the_lora_loads_with_comfyuis_lora_loader_onto_the_base(comfy, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    base = _randomised(load_wan(_config(), FRAMES, SIZE)).eval()
    save_file(comfy_state_dict(base), str(tmp_path / "base.safetensors"))
    adapted = add_lora(base, rank=4)
    with torch.no_grad():  # adapters that do something (peft starts B at zero)
        for name, p in adapted.transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.2)
    lora = lora_state_dict(adapted)
    ours = _through_comfyui(comfy, tmp_path / "base.safetensors", lora=lora)
    x, sigma, text = _inputs()
    with torch.no_grad():
        expected = adapted(x, sigma, text)
        got = ours(x, sigma, text)
        plain = _through_comfyui(comfy, tmp_path / "base.safetensors")(x, sigma, text)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the LoRA changed the prediction


def test_a_wan_vae_trained_here_loads_in_comfyuis_load_vae_and_codes_as_ours(comfy, tmp_path):
    """:func:`streamdit_core.wan_vae.save_wan_vae` writes the file ComfyUI's Load VAE detects as a
    Wan 2.1 VAE; decoding and encoding through it, with ComfyUI's Wan latent format, equal ours."""
    import comfy.latent_formats

    from nodes.wan import WanVideoCodec
    from streamdit_core.wan_vae import new_wan_vae, save_wan_vae

    torch.manual_seed(0)
    vae = new_wan_vae(base_dim=8)
    with torch.no_grad():
        for p in vae.vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    video = torch.rand(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    vae.calibrate(video)
    path = save_wan_vae(vae, tmp_path)
    theirs = WanVideoCodec(comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path))), comfy.latent_formats.Wan21())
    assert (theirs.latent_channels, theirs.space_factor) == (16, 8)
    z = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(theirs.decode(z), vae.decode(z), atol=2e-3, rtol=0)
        torch.testing.assert_close(theirs.encode(video[:1]), vae.encode(video[:1]), atol=2e-3, rtol=1e-3)


def test_a_new_wan_model_made_here_streams_through_comfyuis_loaders_with_no_clip(comfy, tmp_path):
    """``train --init wan:new`` writes a model and VAE ComfyUI's own loaders take; the Wan node
    with no CLIP reads prompts with the pack's MiniLM padded to the model's text width, and
    predicts and streams what the pack's own pipeline does."""
    from nodes.wan import comfy_pipeline
    from streamdit_core import Partition, Pipeline
    from streamdit_core.data import render_world_folder
    from streamdit_core.recipes import train_wan
    from streamdit_core.train import TrainConfig
    from streamdit_core.wan_vae import COMFY_VAE_FILE

    clips = render_world_folder(tmp_path / "clips", videos=2, seconds=2.5)
    new = dict(vae_steps=1, vae_width=8, vae_batch=1, check_clips=1,
               transformer=dict(num_layers=1, num_attention_heads=1, ffn_dim=64))
    shipped = train_wan(tmp_path / "run", TrainConfig(steps=2, batch_size=2, warmup=1), "new", data=clips,
                        size=32, buffer_frames=4, clips=4, new=new, log=lambda _: None)
    ours = Pipeline.load(shipped)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(tmp_path / "run" / "base" / COMFY_VAE_FILE)))
    theirs = comfy_pipeline(comfy.sd.load_diffusion_model(str(shipped)), None, vae, width=32, height=32,
                            buffer_frames=4, guidance=1.0, shift=3.0)
    prompt = "a red circle moving left on a black background"
    text = theirs.text.encode(prompt)
    assert text.tokens.shape[-1] == 4096 and torch.equal(text.tokens, ours.text.encode(prompt).tokens)
    g = torch.Generator().manual_seed(3)
    x, sigma = torch.randn(1, 16, 4, 4, 4, generator=g), torch.tensor([[0.1, 0.4, 0.7, 0.95]])
    with torch.no_grad():
        torch.testing.assert_close(theirs.model(x, sigma, text), ours.model(x, sigma, text), rtol=1e-4, atol=1e-4)
    P = Partition(K=0, N=2, c=2, s=2)
    a = torch.cat([c.frames for c in ours.frames(prompt, frames=16, partition=P, seed=1)])
    b = torch.cat([c.frames for c in theirs.frames(prompt, frames=16, partition=P, seed=1)])
    assert a.shape == b.shape == (16, 3, 32, 32)
    assert (a - b).abs().max() < 0.02  # ComfyUI's VAE decodes what ours does (within its float32 ops)
