"""The noise convention, warps, partitions, sigma tables and training noise."""

import dataclasses

import pytest
import torch

from streamdit_core.schedule import (
    MixedPartitions,
    Partition,
    SigmaWarp,
    add_noise,
    chunk_sigma_table,
    euler_step,
    frame_sigma_table,
    predict_x0,
    sample_chunk_sigma,
    velocity_target,
)

WARPS = [SigmaWarp.identity(), SigmaWarp.power(2.0), SigmaWarp.shift(3.0)]


# ---------------------------------------------------------------------------------------------
# The convention: sigma = 1 noise, 0 clean; x = (1 - sigma) x0 + sigma eps; v = eps - x0.

def test_noise_convention_endpoints_and_target():
    x0, eps = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 4, 5, 5)
    ones, zeros = torch.ones(2, 4), torch.zeros(2, 4)
    assert torch.equal(add_noise(x0, eps, ones), eps)
    assert torch.equal(add_noise(x0, eps, zeros), x0)
    sigma = torch.tensor([[0.1, 0.4, 0.7, 1.0], [0.0, 0.25, 0.5, 0.75]])
    x = add_noise(x0, eps, sigma)
    # frame 2 of sample 0 is 0.3 x0 + 0.7 eps
    assert torch.allclose(x[0, :, 2], 0.3 * x0[0, :, 2] + 0.7 * eps[0, :, 2])
    v = velocity_target(x0, eps)
    assert torch.equal(v, eps - x0)
    assert torch.allclose(predict_x0(x, v, sigma), x0, atol=1e-6)


def test_constant_velocity_integrates_exactly_per_frame():
    # Along the straight path the velocity is constant, so Euler over any grid lands on x0.
    x0, eps = torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 3, 4, 4)
    v = velocity_target(x0, eps)
    grid = SigmaWarp.shift(3.0)(torch.linspace(1, 0, 9, dtype=torch.float64)).float()
    x = eps.clone()
    for a, b in zip(grid[:-1], grid[1:]):
        x = euler_step(x, v, a.expand(1, 3), b.expand(1, 3))
    assert torch.allclose(x, x0, atol=1e-5)


def test_euler_step_leaves_frames_with_zero_step_bit_identical():
    x, v = torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 3, 4, 4)
    sigma = torch.tensor([[0.0, 0.5, 1.0]])
    sigma_next = torch.tensor([[0.0, 0.25, 0.75]])
    y = euler_step(x, v, sigma, sigma_next)
    assert torch.equal(y[:, :, 0], x[:, :, 0])
    assert torch.allclose(y[:, :, 1], x[:, :, 1] - 0.25 * v[:, :, 1])


def test_per_frame_sigma_shape_is_checked():
    with pytest.raises(ValueError, match=r"sigma must be \[B, F\]"):
        add_noise(torch.zeros(1, 2, 3, 4, 4), torch.zeros(1, 2, 3, 4, 4), torch.zeros(1, 4))


# ---------------------------------------------------------------------------------------------
# Warps

def test_shift_warp_is_comfyui_model_sampling_shift():
    warp = SigmaWarp.shift(3.0)
    # sigma' = 3 s / (1 + 2 s): 0.5 -> 0.75, 0.25 -> 0.5
    assert warp(0.5) == pytest.approx(0.75)
    assert warp(0.25) == pytest.approx(0.5)
    assert SigmaWarp.power(2.0)(0.5) == pytest.approx(0.25)


@pytest.mark.parametrize("warp", WARPS, ids=str)
def test_warps_are_monotone_and_fix_the_ends(warp):
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    w = warp(u)
    assert w[0] == 0 and w[-1] == 1
    assert (w[1:] > w[:-1]).all()
    assert SigmaWarp.parse(str(warp)) == warp


@pytest.mark.parametrize("kind,value", [("shift", 0.0), ("power", -1.0), ("cosine", 1.0), ("shift", float("nan"))])
def test_bad_warps_are_refused(kind, value):
    with pytest.raises(ValueError, match=kind):
        SigmaWarp(kind, value)


def test_unreadable_warp_text_names_the_forms():
    with pytest.raises(ValueError, match="shift:S"):
        SigmaWarp.parse("shift:")


# ---------------------------------------------------------------------------------------------
# Partitions

def test_partition_sizes_and_presets():
    p = Partition(K=2, N=8, c=2, s=4)
    assert (p.B, p.T) == (18, 32)
    assert Partition.uniform(16, 32) == Partition(0, 1, 16, 32)
    assert Partition.diagonal(16) == Partition(0, 16, 1, 1)
    assert Partition.streamdit(16, 2) == Partition(0, 8, 2, 1)
    assert Partition.streamdit(16, 2, T=32) == Partition(0, 8, 2, 4)
    assert Partition.streamdit(18, 4, s=2, K=2) == Partition(2, 4, 4, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.c = 3


@pytest.mark.parametrize(
    "make,names",
    [
        (lambda: Partition(0, 0, 2, 1), ["N=0"]),
        (lambda: Partition(-1, 2, 2, 1), ["K=-1"]),
        (lambda: Partition(0, 2, 2, 0), ["s=0"]),
        (lambda: Partition(0, 2, 1.5, 1), ["c=1.5"]),
        (lambda: Partition(0, True, 2, 1), ["N=True"]),
        (lambda: Partition.streamdit(16, 3), ["B=16", "c=3"]),
        (lambda: Partition.streamdit(16, 2, K=1), ["B=16", "K=1", "c=2"]),
        (lambda: Partition.streamdit(16, 2, T=12), ["T=12", "N=8"]),
        (lambda: Partition.streamdit(16, 2, s=2, T=16), ["s=2", "T=16"]),
        (lambda: Partition.diagonal(2, K=2), ["B=2", "K=2"]),
    ],
)
def test_inconsistent_partitions_name_their_values(make, names):
    with pytest.raises(ValueError) as err:
        make()
    for name in names:
        assert name in str(err.value)


def test_chunk_table_bands_and_steps():
    p = Partition(K=0, N=4, c=2, s=3)
    table = chunk_sigma_table(p)
    assert table.shape == (4, 4) and table.dtype == torch.float64
    assert torch.equal(table[0], torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    assert torch.equal(table[-1], torch.tensor([0.0, 0.25, 0.5, 0.75], dtype=torch.float64))
    assert torch.allclose(table[:-1] - table[1:], torch.full((3, 4), 1 / 12, dtype=torch.float64))


def test_a_frame_passes_every_level_once():
    # A frame enters as chunk N-1 and drops one chunk per cycle: the rows it sees, in order,
    # are every level of a T-step grid from 1 down to 1/T, then 0 when it leaves.
    p = Partition(K=1, N=5, c=3, s=4)
    table = frame_sigma_table(p)
    seen = [table[m, p.K + j * p.c].item() for j in reversed(range(p.N)) for m in range(p.s)]
    assert seen == [k / p.T for k in range(p.T, 0, -1)]
    assert table[p.s, p.K] == 0


def test_frame_table_spreads_chunks_and_zeroes_references():
    p = Partition(K=2, N=3, c=2, s=2)
    frames = frame_sigma_table(p, SigmaWarp.shift(2.0))
    chunks = chunk_sigma_table(p, SigmaWarp.shift(2.0))
    assert frames.shape == (3, 8)
    assert torch.equal(frames[:, :2], torch.zeros(3, 2, dtype=torch.float64))
    assert torch.equal(frames[:, 2:], chunks.repeat_interleave(2, dim=1))


@pytest.mark.parametrize("warp", WARPS, ids=str)
def test_tables_apply_the_warp_to_the_uniform_grid(warp):
    p = Partition(K=0, N=8, c=2, s=4)
    assert torch.equal(chunk_sigma_table(p, warp), warp(chunk_sigma_table(p)))
    # strength shrinks the grid before the warp, as ComfyUI's denoise does
    assert torch.allclose(chunk_sigma_table(p, warp, 0.5), warp(0.5 * chunk_sigma_table(p)))
    with pytest.raises(ValueError, match="strength"):
        chunk_sigma_table(p, warp, 0.0)


# ---------------------------------------------------------------------------------------------
# Training noise

@pytest.mark.parametrize("warp", WARPS, ids=str)
def test_training_noise_follows_eq8_inside_the_inference_bands(warp):
    p = Partition(K=2, N=4, c=3, s=5)
    gen = torch.Generator().manual_seed(0)
    sigma = sample_chunk_sigma(p, 4000, gen, warp)
    assert sigma.shape == (4000, p.B) and sigma.dtype == torch.float32
    assert torch.equal(sigma[:, : p.K], torch.zeros(4000, p.K))
    chunks = sigma[:, p.K:].view(4000, p.N, p.c)
    assert (chunks == chunks[:, :, :1]).all(), "frames of a chunk share one level"
    # Chunk j's draws cover the band the inference table gives it, and only that band.
    table = chunk_sigma_table(p, warp).float()
    lo, hi = table[-1], table[0]
    level = chunks[:, :, 0]
    assert (level >= lo - 1e-6).all() and (level <= hi + 1e-6).all()
    # Uniform inside the band before the warp: the unwarped mean sits mid-band.
    plain = sample_chunk_sigma(p, 4000, torch.Generator().manual_seed(1))[:, p.K:].view(4000, p.N, p.c)[:, :, 0]
    mid = (torch.arange(p.N) + 0.5) / p.N
    assert torch.allclose(plain.mean(0), mid, atol=0.01)


def test_mixed_partitions_default_mix_and_validation():
    mix = MixedPartitions(B=16)
    assert mix.chunk_sizes == (1, 2, 4, 8, 16)
    assert [q.c for q in mix.partitions] == [1, 2, 4, 8, 16]
    assert MixedPartitions(B=12, K=0).chunk_sizes == (1, 2, 4, 12)
    with pytest.raises(ValueError, match=r"\[3\]"):
        MixedPartitions(B=16, chunk_sizes=(1, 3))
    with pytest.raises(ValueError, match="uniform_ratio"):
        MixedPartitions(B=16, uniform_ratio=1.5)


def test_mixed_samples_are_eq8_for_the_scheme_each_drew():
    mix = MixedPartitions(B=16, K=0, chunk_sizes=(1, 2, 4, 8, 16))
    warp = SigmaWarp.shift(2.0)
    noise = mix.sample(5000, torch.Generator().manual_seed(3), warp)
    assert noise.sigma.shape == (5000, 16)
    counts = torch.bincount(noise.chunk_size, minlength=17)[[1, 2, 4, 8, 16]]
    assert (counts > 850).all() and (counts < 1150).all(), counts  # about 1000 each
    for c in (1, 2, 4, 8, 16):
        rows = noise.sigma[noise.chunk_size == c].view(-1, 16 // c, c)
        assert (rows == rows[:, :, :1]).all()
        table = chunk_sigma_table(Partition.streamdit(16, c), warp).float()
        assert (rows[:, :, 0] >= table[-1] - 1e-6).all() and (rows[:, :, 0] <= table[0] + 1e-6).all()


def test_uniform_ratio_mixes_in_text_to_video_samples():
    mix = MixedPartitions(B=8, K=2, chunk_sizes=(2,), uniform_ratio=0.3)
    noise = mix.sample(4000, torch.Generator().manual_seed(0))
    uniform = noise.chunk_size == 8
    assert 0.26 < uniform.float().mean() < 0.34
    flat = noise.sigma[uniform]
    assert (flat == flat[:, :1]).all() and (flat[:, 0] > 0).any()
    chunked = noise.sigma[~uniform]
    assert (chunked[:, :2] == 0).all()
    assert (chunked[:, 2:].view(-1, 3, 2)[:, :, 0].diff(dim=1) > 0).all(), "levels rise to the input end"
    all_uniform = MixedPartitions(B=8, uniform_ratio=1.0).sample(50, torch.Generator().manual_seed(0))
    assert (all_uniform.chunk_size == 8).all()


def test_mixed_reference_counts_draw_a_count_and_a_chunk_size_it_allows():
    mix = MixedPartitions(B=8, K=(2, 0))
    assert mix.reference_counts == (0, 2)
    assert mix.chunk_sizes == (1, 2, 4, 6, 8)
    assert {(q.K, q.c) for q in mix.partitions} == {(0, 1), (0, 2), (0, 4), (0, 8), (2, 1), (2, 2), (2, 6)}
    noise = mix.sample(4000, torch.Generator().manual_seed(5))
    refs, chunk = noise.references, noise.chunk_size
    assert 0.45 < (refs == 2).float().mean() < 0.55
    assert set(chunk[refs == 2].tolist()) == {1, 2, 6} and set(chunk[refs == 0].tolist()) == {1, 2, 4, 8}
    with_refs = noise.sigma[refs == 2]
    assert (with_refs[:, :2] == 0).all() and (with_refs[:, 2:] > 0).all()
    for c in (1, 2, 6):  # Eq. 8 bands over the six streamed frames
        rows = noise.sigma[(refs == 2) & (chunk == c)][:, 2:].view(-1, 6 // c, c)
        assert (rows == rows[:, :, :1]).all()
        band = torch.arange(6 // c)
        assert (rows[:, :, 0] >= band / (6 // c) - 1e-6).all() and (rows[:, :, 0] <= (band + 1) / (6 // c) + 1e-6).all()
    assert (noise.sigma[refs == 0] > 0).all()
    with pytest.raises(ValueError, match="divide the 6 streamed frames"):
        MixedPartitions(B=8, K=(0, 2), chunk_sizes=(4, 8))
    with pytest.raises(ValueError, match="0 <= K < B"):
        MixedPartitions(B=8, K=(0, 8))
