"""StreamDiT: window attention, per-frame modulation, adaLN-Zero, text masking, presets."""

import dataclasses
import resource

import pytest
import torch
from torch import nn

from helpers import random_text, randomized
from streamdit_core import PRESETS, StreamDiT, StreamDiTConfig, TextEmbedding
from streamdit_core.attention import WindowSelfAttention
from streamdit_core.model import Conditioning

NO_TEXT = Conditioning(None, None, None, None)


def attention_pair(window, shifted, dim=16, heads=2, seed=0):
    """A windowed attention and a full one with the same weights."""
    torch.manual_seed(seed)
    win = WindowSelfAttention(dim, heads, window, shifted, qk_norm=True)
    full = WindowSelfAttention(dim, heads, None, shifted, qk_norm=True)
    full.load_state_dict(win.state_dict())
    return win, full


# ---------------------------------------------------------------------------------------------
# Window attention

@pytest.mark.parametrize("shifted", [False, True])
def test_one_window_over_the_whole_buffer_is_full_attention(shifted):
    grid = (4, 3, 5)
    win, full = attention_pair(window=grid, shifted=shifted)
    x = torch.randn(2, 60, 16)
    assert torch.allclose(win(x, grid), full(x, grid), atol=1e-6)
    # Windows larger than the grid clip to it: still full attention.
    big, _ = attention_pair(window=(8, 8, 8), shifted=shifted)
    assert torch.allclose(big(x, grid), full(x, grid), atol=1e-6)


def window_id(coord, grid, window, shifted):
    """Which window a token is in, in original coordinates (written independently of the model).

    Unshifted windows tile each axis from 0; shifted ones start half a window in, and the
    tokens before that first boundary form a window of their own (the cyclic wrap is cut).
    """
    ids = []
    for o, g, w in zip(coord, grid, window):
        w = min(w, g)
        shift = w // 2 if shifted and w < g else 0
        ids.append((o - shift) // w)
    return tuple(ids)


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("grid,window", [((4, 4, 4), (2, 2, 2)), ((6, 4, 6), (4, 2, 4)), ((5, 3, 4), (2, 2, 4))])
def test_tokens_outside_a_window_do_not_reach_it(grid, window, shifted):
    torch.manual_seed(1)
    attn = WindowSelfAttention(16, 2, window, shifted, qk_norm=True)
    coords = [(f, h, w) for f in range(grid[0]) for h in range(grid[1]) for w in range(grid[2])]
    x = torch.randn(1, len(coords), 16)
    out = attn(x, grid)
    gen = torch.Generator().manual_seed(2)
    for q in torch.randint(len(coords), (6,), generator=gen).tolist():
        mine = window_id(coords[q], grid, window, shifted)
        inside = torch.tensor([window_id(c, grid, window, shifted) == mine for c in coords])
        poked = x.clone()
        poked[0, ~inside] += 10 * torch.randn(int((~inside).sum()), 16, generator=gen)
        assert torch.allclose(attn(poked, grid)[0, q], out[0, q], atol=1e-5), f"token {coords[q]} saw outside its window"
        others = inside.nonzero().flatten().tolist()
        others.remove(q)
        if others:  # the same poke inside the window does change it
            poked = x.clone()
            poked[0, others[0]] += 10
            assert not torch.allclose(attn(poked, grid)[0, q], out[0, q], atol=1e-3)


def test_shifted_blocks_alternate_and_mix_across_unshifted_windows():
    model = StreamDiT(StreamDiTConfig(depth=4))
    assert [b.attn.shifted for b in model.blocks] == [False, True, False, True]
    lay = model.blocks[1].attn.layout((16, 4, 4))
    assert lay.window == (4, 4, 4) and lay.shift == (2, 0, 0)  # only time has room to shift


# ---------------------------------------------------------------------------------------------
# Per-frame modulation and adaLN-Zero

class NoMixing(nn.Module):
    """Stands in for an attention module: contributes nothing, so tokens cannot mix."""

    def forward(self, x, *args):
        return torch.zeros_like(x)


def test_sigma_of_one_frame_modulates_only_that_frames_tokens():
    model = randomized(StreamDiTConfig(depth=1), scale=0.2)
    block = model.blocks[0]
    block.attn, block.cross_attn = NoMixing(), NoMixing()
    F, S, D = 6, 9, model.config.hidden_size
    x = torch.randn(2, F * S, D)
    sigma = torch.rand(2, F)
    with torch.no_grad():
        out = block(x, model.t_embedder(sigma), (F, 3, 3), NO_TEXT).view(2, F, S, D)
        changed = sigma.clone()
        changed[1, 4] = 0.9 if sigma[1, 4] < 0.5 else 0.1
        again = block(x, model.t_embedder(changed), (F, 3, 3), NO_TEXT).view(2, F, S, D)
    diff = (out - again).abs().amax(dim=(2, 3))  # [B, F]
    assert diff[1, 4] > 1e-3
    diff[1, 4] = 0
    assert (diff == 0).all()


def test_a_fresh_block_is_the_identity_and_a_fresh_model_predicts_zero():
    model = StreamDiT(StreamDiTConfig(depth=2))
    x = torch.randn(2, 16 * 16, model.config.hidden_size)
    t = model.t_embedder(torch.rand(2, 16))
    context = model.y_embedder(torch.randn(2, 5, 32))
    with torch.no_grad():
        for block in model.blocks:
            assert torch.equal(block(x, t, (16, 4, 4), Conditioning(context, None, None, None)), x)
        v = model(torch.randn(2, 4, 16, 8, 8), torch.rand(2, 16), random_text(2))
    assert torch.equal(v, torch.zeros_like(v))


# ---------------------------------------------------------------------------------------------
# The whole model

def test_forward_shapes_batching_and_dtype(tiny_model):
    x, sigma, text = torch.randn(3, 4, 16, 8, 8), torch.rand(3, 16), random_text(1)
    with torch.no_grad():
        v = tiny_model(x, sigma, text)
        one = tiny_model(x[1:2], sigma[1:2], text)
        v64 = tiny_model(x.double(), sigma, text)
    assert v.shape == x.shape and v.dtype == torch.float32 and v.abs().mean() > 0
    assert torch.allclose(v[1:2], one, atol=1e-5)
    assert v64.dtype == torch.float64
    # frames and sizes that are not whole windows are padded, not refused
    odd = tiny_model(torch.randn(1, 4, 7, 6, 10), torch.rand(1, 7), text)
    assert odd.shape == (1, 4, 7, 6, 10) and torch.isfinite(odd).all()


@pytest.mark.parametrize("pooled", [False, True])
def test_padded_text_tokens_are_ignored(pooled):
    tiny_model = randomized(StreamDiTConfig(pooled_text=pooled))
    x, sigma = torch.randn(2, 4, 16, 8, 8), torch.rand(2, 16)
    text = random_text(2, length=8, real=5)
    with torch.no_grad():
        out = tiny_model(x, sigma, text)
        noisy = text.tokens.clone()
        noisy[:, 5:] += 5 * torch.randn(2, 3, 32)
        assert torch.equal(tiny_model(x, sigma, TextEmbedding(noisy, text.mask)), out)
        noisy[:, 2] += 1
        assert not torch.allclose(tiny_model(x, sigma, TextEmbedding(noisy, text.mask)), out, atol=1e-4)
        # a sample with no real token gets no text at all
        empty = TextEmbedding(text.tokens, torch.zeros_like(text.mask))
        assert torch.allclose(tiny_model(x, sigma, empty), tiny_model(x, sigma, None), atol=1e-6)


def test_pooled_text_reaches_every_frames_modulation_on_its_own():
    model = randomized(StreamDiTConfig(pooled_text=True))
    with torch.no_grad():
        for block in model.blocks:  # cut the cross-attention: only the pooled path carries text
            block.cross_attn.proj.weight.zero_()
            block.cross_attn.proj.bias.zero_()
        x, sigma = torch.randn(1, 4, 16, 8, 8), torch.rand(1, 16)
        a, b = model(x, sigma, random_text(seed=1)), model(x, sigma, random_text(seed=2))
        assert (a - b).abs().flatten(3).amax(-1).min() > 0  # every frame, every channel moved
        plain = StreamDiT(dataclasses.replace(model.config, pooled_text=False))
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("pool_embedder")})
        assert torch.allclose(plain(x, sigma, random_text(seed=1)), plain(x, sigma, random_text(seed=2)), atol=1e-6)


def test_window_attention_model_equals_full_attention_model_when_one_window_covers_all():
    windowed = randomized(StreamDiTConfig(window=(16, 4, 4)))
    full = StreamDiT(dataclasses.replace(windowed.config, window=None))
    full.load_state_dict(windowed.state_dict())
    x, sigma, text = torch.randn(1, 4, 16, 8, 8), torch.rand(1, 16), random_text()
    with torch.no_grad():
        assert torch.allclose(windowed(x, sigma, text), full(x, sigma, text), atol=1e-5)


def test_gradients_reach_every_parameter(tiny_model):
    tiny_model.train()
    v = tiny_model(torch.randn(2, 4, 16, 8, 8), torch.rand(2, 16), random_text(2, real=3))
    v.square().mean().backward()
    missing = [n for n, p in tiny_model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_inputs_are_checked_with_the_actual_shape(tiny_model):
    with pytest.raises(ValueError, match=r"C=4.*got \[1, 3, 16, 8, 8\]"):
        tiny_model(torch.randn(1, 3, 16, 8, 8), torch.rand(1, 16))
    with pytest.raises(ValueError, match=r"sigma must be \[B, F\] = \[1, 16\], got \[16\]"):
        tiny_model(torch.randn(1, 4, 16, 8, 8), torch.rand(16))
    with pytest.raises(ValueError, match="multiples of patch_size=2"):
        tiny_model(torch.randn(1, 4, 16, 7, 8), torch.rand(1, 16))
    with pytest.raises(ValueError, match="width Dt=32"):
        tiny_model(torch.randn(1, 4, 16, 8, 8), torch.rand(1, 16), torch.randn(1, 3, 16))
    with pytest.raises(ValueError, match=r"text batch 2 does not match latent batch 3"):
        tiny_model(torch.randn(3, 4, 16, 8, 8), torch.rand(3, 16), torch.randn(2, 3, 32))


# ---------------------------------------------------------------------------------------------
# Config and presets

def test_config_round_trips_and_rejects_bad_values():
    cfg = PRESETS["paper-4b"]
    assert StreamDiTConfig.from_json(cfg.to_json()) == cfg
    assert StreamDiTConfig.preset("tiny") == StreamDiTConfig()
    with pytest.raises(ValueError, match="presets: tiny, embedded, paper-4b"):
        StreamDiTConfig.preset("huge")
    with pytest.raises(ValueError, match="num_heads"):
        StreamDiTConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="window"):
        StreamDiTConfig(window=(4, 4))
    with pytest.raises(ValueError, match="sigma_warp"):
        StreamDiTConfig(sigma_warp="shift:-1")
    with pytest.raises(ValueError, match="pooled_text"):
        StreamDiTConfig(pooled_text="yes")
    with pytest.raises(ValueError, match=r"unknown StreamDiTConfig fields \['depthh'\]"):
        StreamDiTConfig.from_dict({"depthh": 3})


def test_paper_4b_on_meta_has_4b_parameters_and_allocates_nothing():
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with torch.device("meta"):
        model = StreamDiT.from_preset("paper-4b")
    params = list(model.parameters())
    count = sum(p.numel() for p in params)
    assert abs(count - 4e9) / 4e9 < 0.10, count
    assert all(p.is_meta for p in params)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown < 512 * 1024, f"building on meta grew peak memory by {grown} KiB"
    cfg = model.config
    assert (cfg.in_channels, cfg.buffer_frames, cfg.latent_size) == (8, 16, (64, 64))


def test_wrapped_positions_make_the_latent_frame_a_torus():
    """With periodic positions, moving the input across the border (whole tokens) moves the
    output the same way; with the default positions the borders are edges."""
    from streamdit_core.conditioning import TextEmbedding

    x = torch.randn(1, 4, 4, 8, 8)
    sigma = torch.tensor([[0.2, 0.4, 0.6, 0.8]])
    text = TextEmbedding(torch.randn(1, 3, 32))
    for wrap in (True, False):
        model = randomized(StreamDiTConfig(wrap=wrap, buffer_frames=4, window=(2, 4, 4)))
        with torch.no_grad():
            out = model(x, sigma, text)
            moved = model(torch.roll(x, (2, 4), dims=(3, 4)), sigma, text)  # 1 token down, 2 right
        assert torch.allclose(torch.roll(out, (2, 4), dims=(3, 4)), moved, atol=1e-5) == wrap


def test_a_clean_prediction_model_returns_the_velocity_of_its_clean_frames():
    from streamdit_core.model import CLEAN_SIGMA_FLOOR

    x = torch.randn(2, 4, 4, 8, 8)
    sigma = torch.tensor([[0.0, 0.02, 0.5, 1.0]]).expand(2, -1)
    plain = randomized(StreamDiTConfig(buffer_frames=4))
    clean = randomized(StreamDiTConfig(buffer_frames=4, prediction="clean"))  # same weights, same seed
    with torch.no_grad():
        x0 = plain(x, sigma)  # what the network outputs
        v = clean(x, sigma)
    floor = sigma.clamp_min(CLEAN_SIGMA_FLOOR)[:, None, :, None, None]
    assert torch.allclose(v, (x - x0) / floor, atol=1e-5)
    with pytest.raises(ValueError, match="prediction"):
        StreamDiTConfig(prediction="noise")


def test_the_output_convolution_starts_silent_and_wraps_with_the_torus():
    from streamdit_core.conditioning import TextEmbedding

    x, sigma = torch.randn(1, 4, 4, 8, 8), torch.tensor([[0.2, 0.4, 0.6, 0.8]])
    text = TextEmbedding(torch.randn(1, 3, 32))
    torch.manual_seed(0)
    fresh = StreamDiT(StreamDiTConfig(out_conv=True, buffer_frames=4))
    assert fresh.out_conv is not None and not fresh.out_conv.weight.any()  # zero-initialised
    model = randomized(StreamDiTConfig(out_conv=True, wrap=True, buffer_frames=4, window=(2, 4, 4)))
    with torch.no_grad():
        out = model(x, sigma, text)
        moved = model(torch.roll(x, (2, 4), dims=(3, 4)), sigma, text)
    assert torch.allclose(torch.roll(out, (2, 4), dims=(3, 4)), moved, atol=1e-5)  # still a torus
