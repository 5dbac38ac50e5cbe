"""The fast path on a CPU: every variant computes what the plain model computes."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from helpers import random_text, randomized
from streamdit_core import FrameText, Partition, StreamDiTConfig, Streamer
from streamdit_core.accel import Accelerated, FastPath, Fp8Linear, accelerate, to_fp8
from streamdit_core.guidance import Guided

# Shifted windows that also need padding: grid (10, 4, 5) tokens in windows of (4, 3, 3).
WINDOWED = StreamDiTConfig(depth=2, window=(4, 3, 3), buffer_frames=10, latent_size=(8, 10))


def inputs(batch: int = 2, real: int = 4):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 10, 8, 10, generator=gen)
    sigma = torch.rand(batch, 10, generator=gen)
    return x, sigma, random_text(batch, length=6, real=real)


def fresh(config=WINDOWED):
    return randomized(config, scale=0.2)


def relative(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_fp32_eager_path_equals_the_model_with_padded_guided_and_per_frame_text():
    model = fresh()
    fast = accelerate(fresh(), FastPath(text_tokens=16))  # the text is padded to 16 tokens
    x, sigma, text = inputs()
    with torch.no_grad():
        assert torch.allclose(fast(x, sigma, text), model(x, sigma, text), atol=1e-5)
        guided_fast, guided = Guided(fast, 4.0), Guided(model, 4.0)  # the no-text branch too
        assert torch.allclose(guided_fast(x, sigma, text), guided(x, sigma, text), atol=1e-5)
        other = random_text(2, length=3, seed=5)
        per_frame = FrameText.of_frames([text] * 6 + [other] * 4)
        assert torch.allclose(fast(x, sigma, per_frame), model(x, sigma, per_frame), atol=1e-5)
        # The prepared text is reused while the prompt object is the same, redone when it changes.
        assert not torch.allclose(fast(x, sigma, other), fast(x, sigma, text))


def test_compiled_path_with_flex_windows_agrees_with_eager_sdpa():
    model = fresh()
    path = FastPath(compile=True)
    assert path.backend == "flex"
    fast = accelerate(fresh(), path)
    x, sigma, text = inputs()
    with torch.no_grad():
        want = model(x, sigma, text)
        got = fast(x, sigma, text)
        again = fast(x + 0.1, sigma, text)  # second call: the compiled kernels, no recompile needed
    assert fast._compiled_ok
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert torch.allclose(again, model(x + 0.1, sigma, text), atol=1e-4)


def test_bf16_path_is_close_and_streams_keep_a_float32_buffer():
    model = fresh()
    fast = accelerate(fresh(), FastPath(dtype="bf16"))
    assert next(fast.parameters()).dtype == torch.bfloat16
    x, sigma, text = inputs()
    with torch.no_grad():
        v = fast(x, sigma, text)
        want = model(x, sigma, text)
    assert v.dtype == torch.float32
    assert relative(v, want) < 0.03
    stream = Streamer(fast, Partition.streamdit(10, 2, s=1), (4, 8, 10), text=random_text(1))
    assert stream.state.x.dtype == torch.float32
    assert stream.next_chunk().latents.dtype == torch.float32


def test_fp8_linear_matches_the_linear_it_replaces():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    fp8 = Fp8Linear(linear)
    assert fp8.weight_fp8.dtype == torch.float8_e4m3fn
    for rows in (32, 7):  # 7 rows: the dequantised fallback
        x = torch.randn(rows, 64)
        with torch.no_grad():
            err = relative(fp8(x), linear(x))
        assert 1e-4 < err < 0.06, err  # quantised (not a copy), but within e4m3's precision


def test_fp8_path_replaces_the_block_projections_and_stays_close():
    model = fresh(StreamDiTConfig(hidden_size=64, depth=2, num_heads=4, window=(4, 3, 3), buffer_frames=10,
                                  latent_size=(8, 10)))
    want_model = fresh(model.config)
    converted = to_fp8(fresh(model.config))
    assert converted == 2 * 7  # qkv, proj; q, kv, proj; fc1, fc2 in each block
    fast = accelerate(model, FastPath(fp8=True))
    assert isinstance(fast.model.blocks[0].mlp.fc1, Fp8Linear)
    x, sigma, text = inputs()
    with torch.no_grad():
        assert relative(fast(x, sigma, text), want_model(x, sigma, text)) < 0.1


def test_cuda_graphs_need_cuda_and_the_error_says_so():
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        accelerate(fresh(), FastPath(cuda_graphs=True))
    with pytest.raises(ValueError, match="unknown dtype"):
        FastPath(dtype="int4")
    with pytest.raises(TypeError, match="takes a StreamDiT"):
        accelerate(nn.Linear(2, 2))


def test_auto_is_the_plain_model_on_a_cpu():
    assert FastPath.auto("cpu") == FastPath()
    assert FastPath.auto("cuda") == FastPath(dtype="bf16", cuda_graphs=True)


def test_a_failed_compile_falls_back_to_eager_with_a_warning(caplog):
    from torch._dynamo.exc import TorchDynamoException

    model = fresh()
    fast = accelerate(fresh(), FastPath(compile=True))

    def broken(*args):
        raise TorchDynamoException("no C++ compiler found")

    fast._run = broken
    x, sigma, text = inputs()
    with caplog.at_level(logging.WARNING, logger="streamdit_core.accel"), torch.no_grad():
        v = fast(x, sigma, text)
    assert "running eagerly" in caplog.text
    assert not fast.path.compile and fast.path.backend == "sdpa"
    assert torch.allclose(v, model(x, sigma, text), atol=1e-5)


def test_model_errors_are_not_mistaken_for_compile_failures():
    fast = accelerate(fresh(), FastPath(compile=True))
    x, sigma, text = inputs()
    with pytest.raises(ValueError, match="sigma must be"):
        fast(x, sigma[:, :3], text)
    assert fast.path.compile


def test_an_accelerated_pipeline_streams_what_the_plain_one_does():
    from helpers import PIXEL_CONFIG, Words
    from streamdit_core.codec import PixelCodec
    from streamdit_core.pipeline import Pipeline

    plain = Pipeline(randomized(PIXEL_CONFIG, scale=0.2), PixelCodec(), Words(), 16)
    fast = Pipeline(randomized(PIXEL_CONFIG, scale=0.2), PixelCodec(), Words(), 16).accelerate(FastPath())
    assert isinstance(fast.velocity, Accelerated) and plain.velocity is plain.model
    a = [plain.session("a red circle", guidance=3.0).next_chunk().frames for _ in range(1)]
    b = [fast.session("a red circle", guidance=3.0).next_chunk().frames for _ in range(1)]
    assert torch.allclose(a[0], b[0], atol=1e-5)


def test_generate_fast_choices_map_to_fast_paths():
    from streamdit_core.cli import _fast_path

    assert _fast_path("auto", "cpu") == "auto"
    assert _fast_path("off", "cpu") is None
    assert _fast_path("compile", "cpu") == FastPath(compile=True)
