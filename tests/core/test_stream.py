"""The moving buffer: exactness, frame life cycle, references, starts, prompt switch, memory."""

import gc
import warnings

import pytest
import torch

from helpers import random_text, randomized
from streamdit_core import Partition, SigmaWarp, StreamDiTConfig, StreamError, Streamer
from streamdit_core.analytic import GaussianVelocity
from streamdit_core.schedule import frame_sigma_table

SHAPE = (4, 8, 8)  # (C, H, W) of a latent frame


def zero_velocity(x, sigma, text):
    return torch.zeros_like(x)


class Recorder:
    """Wraps a velocity model and keeps a copy of every call's inputs."""

    def __init__(self, model=zero_velocity):
        self.model = model
        self.calls = []  # (x, sigma, text)

    def __call__(self, x, sigma, text):
        self.calls.append((x.clone(), sigma.clone(), text))
        return self.model(x, sigma, text)


def plain_euler(model, noise, sigmas, text):
    """Ordinary flow-matching Euler sampling of the whole buffer at one shared level."""
    x = noise
    b, _, f = x.shape[:3]
    for a, c in zip(sigmas[:-1], sigmas[1:]):
        v = model(x, a.expand(b, f), text)
        x = x - (a - c) * v
    return x


# ---------------------------------------------------------------------------------------------
# Exactness

@pytest.mark.parametrize("warp", [SigmaWarp.identity(), SigmaWarp.shift(3.0)], ids=str)
def test_uniform_scheme_is_plain_euler_sampling(tiny_model, warp):
    B, T, seed = 16, 6, 7
    text = random_text(batch=2, real=4)
    stream = Streamer(tiny_model, Partition.uniform(B, T), SHAPE, text=text, batch=2, warp=warp, seed=seed)
    chunk = stream.next_chunk()
    assert stream.state.calls == T and chunk.frames == B and chunk.index == 0

    noise = torch.randn((2, *SHAPE[:1], B, *SHAPE[1:]), generator=torch.Generator().manual_seed(seed))
    sigmas = torch.tensor([warp((T - k) / T) for k in range(T + 1)], dtype=torch.float64).float()
    with torch.no_grad():
        expected = plain_euler(tiny_model, noise, sigmas, text)
    assert torch.equal(chunk.latents, expected)


def test_euler_law_of_the_gaussian_field_converges_to_the_data_law():
    field = GaussianVelocity(0.7, 0.4)
    fine = [SigmaWarp.shift(3.0)((4096 - k) / 4096) for k in range(4097)]
    assert field.euler_law(fine) == pytest.approx((0.7, 0.4), abs=1e-3)
    # and it is what sampling with the field gives, elementwise
    eps = torch.randn(1, 1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    grid = torch.tensor([SigmaWarp.shift(3.0)((8 - k) / 8) for k in range(9)], dtype=torch.float64)
    x = plain_euler(GaussianVelocity(0.7, 0.4), eps.double(), grid, None)
    mean, std = field.euler_law(grid.tolist())
    assert torch.allclose(x, mean + std * eps.double(), atol=1e-9)


@pytest.mark.parametrize("warp", [SigmaWarp.identity(), SigmaWarp.shift(3.0)], ids=str)
def test_gaussian_stream_matches_the_data_law_and_does_not_drift(warp):
    mean, std = 0.7, 0.4
    P = Partition(K=0, N=8, c=2, s=4)
    stream = Streamer(GaussianVelocity(mean, std), P, SHAPE, warp=warp, seed=1)
    stream.warm_start()
    frames = torch.cat([chunk.latents[0] for chunk in stream.chunks(2500)], dim=1)  # [C, 5000, H, W]
    assert frames.shape[1] == 5000
    per_frame = frames.transpose(0, 1).reshape(5000, -1)  # [5000, C*H*W]
    # Euler with T = 32 steps lands on the data law up to its O(1/T) error (5% of std here),
    # and exactly on the law of 32 Euler steps, which every frame of the stream must take.
    euler_mean, euler_std = GaussianVelocity(mean, std).euler_law([warp((P.T - k) / P.T) for k in range(P.T + 1)])
    for part in (per_frame[:500], per_frame[-500:], per_frame):
        assert part.mean().item() == pytest.approx(mean, abs=0.01)
        assert part.std().item() == pytest.approx(std, rel=0.12)
        assert part.mean().item() == pytest.approx(euler_mean, abs=0.005)
        assert part.std().item() == pytest.approx(euler_std, abs=0.005)
    # No drift: the last 500 frames have the statistics of the first 500.
    assert (per_frame[-500:].mean() - per_frame[:500].mean()).abs() < 0.005
    assert (per_frame[-500:].std() - per_frame[:500].std()).abs() < 0.005


# ---------------------------------------------------------------------------------------------
# The life of a frame

@pytest.mark.parametrize("partition", [Partition(0, 8, 2, 4), Partition(2, 3, 2, 2), Partition(0, 4, 1, 1)], ids=str)
def test_every_frame_enters_as_noise_passes_every_level_and_leaves_once_in_order(partition):
    # With v = 0 a frame's values never change, so a frame is recognised by its values.
    recorder = Recorder()
    stream = Streamer(recorder, partition, (1, 2, 2), seed=3)
    chunks = list(stream.chunks(4 * partition.N + 3))

    history = {}  # frame values -> [(call number, sigma seen)]
    for call, (x, sigma, _) in enumerate(recorder.calls, start=1):
        for f in range(partition.K, partition.B):
            history.setdefault(tuple(x[0, :, f].flatten().tolist()), []).append((call, sigma[0, f].item()))

    indices = [chunk.index + i for chunk in chunks for i in range(chunk.frames)]
    assert indices == list(range(len(indices))), "emitted once each, in order"
    levels = [k / partition.T for k in range(partition.T, 0, -1)]
    fresh = 0
    for chunk in chunks:
        for i in range(chunk.frames):
            seen = history[tuple(chunk.latents[0, :, i].flatten().tolist())]
            first_call = seen[0][0]
            if first_call == 1:
                continue  # part of the initial fill
            fresh += 1
            assert [s for _, s in seen] == pytest.approx(levels), "every level once, top to bottom"
            assert chunk.calls - (first_call - 1) == partition.N * partition.s
    assert fresh >= 3 * partition.N * partition.c


def test_reference_frames_are_the_last_frames_out_and_never_stepped(tiny_model):
    config = StreamDiTConfig(window=(2, 4, 4))
    model = Recorder(randomized(config))
    P = Partition(K=3, N=2, c=2, s=2)
    stream = Streamer(model, P, SHAPE, text=random_text(), seed=0)
    out = [stream.warm_start().latents]  # the K opening frames
    warm_calls = len(model.calls)
    for _ in range(12):
        before = stream.state.x[:, :, : P.K].clone()
        chunk = stream.step()
        if chunk is None:
            assert torch.equal(stream.state.x[:, :, : P.K], before)
        else:
            out.append(chunk.latents)
            assert torch.equal(stream.state.x[:, :, : P.K], torch.cat(out, dim=2)[:, :, -P.K:])
    assert len(out) == 7
    assert all((sigma[:, : P.K] == 0).all() for _, sigma, _ in model.calls[warm_calls:])


# ---------------------------------------------------------------------------------------------
# Starting a stream

def test_warm_start_fills_each_chunk_from_the_uniform_trajectory(tiny_model):
    P, seed, warp = Partition(K=0, N=4, c=4, s=2), 5, SigmaWarp.shift(2.0)
    text = random_text()
    stream = Streamer(tiny_model, P, SHAPE, text=text, seed=seed, warp=warp)
    assert stream.warm_start(steps=P.T) is None
    assert stream.state.calls == P.T - P.s  # the last band is never needed when K = 0
    assert stream.state.step == 0
    assert torch.equal(stream.state.sigma, frame_sigma_table(P, warp)[0])

    gen = torch.Generator().manual_seed(seed)
    torch.randn((1, 4, P.B, 8, 8), generator=gen)  # the constructor's cold fill
    x = torch.randn((1, 4, P.B, 8, 8), generator=gen)
    grid = [warp((P.T - k) / P.T) for k in range(P.T + 1)]
    cached = {}
    with torch.no_grad():
        for k in range(P.T):
            cached[k] = x
            sigma = torch.tensor(grid[k], dtype=torch.float64).float()
            nxt = torch.tensor(grid[k + 1], dtype=torch.float64).float()
            x = x - (sigma - nxt) * tiny_model(x, sigma.expand(1, P.B), text)
    for j in range(P.N):
        k = P.T - (j + 1) * P.s  # chunk j starts at level (j+1)/N
        lo = j * P.c
        assert torch.equal(stream.state.x[:, :, lo:lo + P.c], cached[k][:, :, lo:lo + P.c])


def test_warm_start_with_references_returns_the_opening_frames(tiny_model):
    P = Partition(K=2, N=2, c=2, s=2)
    stream = Streamer(tiny_model, P, (4, 8, 8), seed=0)
    refs = stream.warm_start()
    assert refs.index == 0 and refs.frames == 2
    assert stream.state.calls == 4 * P.N  # at least four steps per band (T = 4 here)
    assert torch.equal(stream.state.x[:, :, :2], refs.latents)
    assert stream.next_chunk().index == 2
    with pytest.raises(ValueError, match="multiple of N=2"):
        stream.warm_start(steps=3)


def test_warm_start_runs_the_model_it_is_given_and_streams_on_with_its_own(tiny_model):
    from streamdit_core.velocity import CallCounter

    P = Partition(K=2, N=2, c=2, s=1)
    own, opening = CallCounter(tiny_model), CallCounter(tiny_model)
    stream = Streamer(own, P, SHAPE, text=random_text(), seed=0)
    plain = Streamer(tiny_model, P, SHAPE, text=stream.text, seed=0)
    stream.warm_start(model=opening)
    plain.warm_start()
    assert (own.samples, opening.samples) == (0, 4 * P.N)
    assert torch.equal(stream.state.x, plain.state.x)  # the same network: the same opening
    stream.next_chunk()
    assert own.samples > 0 and opening.samples == 4 * P.N


def test_warm_start_after_a_video_fill_is_text_to_video_again(tiny_model):
    stream = Streamer(tiny_model, Partition(0, 2, 8, 1), SHAPE, seed=0)
    stream.fill_video(torch.zeros(1, *SHAPE[:1], 16, *SHAPE[1:]), strength=0.5)
    stream.warm_start()
    assert stream.state.scale == 1.0 and stream.state.sigma.max() == 1.0
    stream.next_chunk()  # admits fresh noise: no source frames needed


def test_a_low_precision_model_streams_into_a_float32_buffer(tiny_model):
    stream = Streamer(tiny_model.to(torch.bfloat16), Partition.streamdit(16, 4, s=2), SHAPE, text=random_text())
    stream.warm_start()
    chunk = stream.next_chunk()
    assert stream.state.x.dtype == torch.float32 and chunk.latents.dtype == torch.float32
    assert torch.isfinite(chunk.latents).all() and chunk.latents.std() > 0.1


def test_cold_start_zeroes_references_and_numbers_chunks_from_zero():
    stream = Streamer(zero_velocity, Partition(K=2, N=2, c=2, s=1), (1, 2, 2))
    assert (stream.state.x[:, :, :2] == 0).all()
    assert stream.state.frame_index.tolist() == [-1, -1, 0, 1, 2, 3]
    assert stream.next_chunk().index == 0


# ---------------------------------------------------------------------------------------------
# Prompt switch, determinism, resumption

def test_prompt_switch_takes_effect_from_the_next_call(tiny_model):
    a, b = random_text(seed=1), random_text(seed=2)
    P = Partition(K=0, N=4, c=4, s=2)

    def run(switch_at):
        rec = Recorder(tiny_model)
        stream = Streamer(rec, P, SHAPE, text=a, seed=0)
        out = []
        for call in range(12):
            if call == switch_at:
                stream.set_text(b)
            chunk = stream.step()
            if chunk is not None:
                out.append(chunk.latents)
        return rec, out

    rec, switched = run(switch_at=5)  # mid-cycle: after 2 chunks and one micro step
    assert [t is b for _, _, t in rec.calls] == [False] * 5 + [True] * 7
    _, plain = run(switch_at=None)
    assert torch.equal(switched[0], plain[0]) and torch.equal(switched[1], plain[1])
    assert not torch.equal(switched[2], plain[2])


def test_streams_are_seeded_and_deterministic(tiny_model):
    P = Partition.streamdit(16, 4, s=2)

    def frames(seed):
        stream = Streamer(tiny_model, P, SHAPE, text=random_text(), seed=seed)
        stream.warm_start()
        return torch.cat([c.latents for c in stream.chunks(3)], dim=2)

    assert torch.equal(frames(11), frames(11))
    assert not torch.equal(frames(11), frames(12))


def test_a_cloned_state_continues_identically_and_leaves_the_original_alone(tiny_model):
    P = Partition.streamdit(16, 4, s=2)
    stream = Streamer(tiny_model, P, SHAPE, text=random_text(), seed=0)
    stream.warm_start()
    stream.step()  # mid-cycle
    saved = stream.state.clone()
    x, rng, calls = saved.x.clone(), saved.generator.get_state(), saved.calls
    ahead = [c.latents for c in stream.chunks(3)]
    assert torch.equal(saved.x, x) and torch.equal(saved.generator.get_state(), rng) and saved.calls == calls
    again = Streamer.resume(tiny_model, saved)  # the state carries its text
    assert all(torch.equal(p, q.latents) for p, q in zip(ahead, again.chunks(3)))


# ---------------------------------------------------------------------------------------------
# Video-to-video

def test_video_fill_noises_each_chunk_to_its_level():
    P, warp, strength = Partition(K=2, N=3, c=2, s=2), SigmaWarp.shift(2.0), 0.6
    source = torch.randn(1, 1, 10, 2, 2)
    stream = Streamer(zero_velocity, P, (1, 2, 2), warp=warp, seed=4)
    refs = stream.fill_video(source, strength)
    assert torch.equal(refs.latents, source[:, :, :2]) and refs.index == 0
    gen = torch.Generator().manual_seed(4)
    torch.randn((1, 1, P.B, 2, 2), generator=gen)  # cold fill
    eps = torch.randn((1, 1, P.B, 2, 2), generator=gen)
    x = stream.state.x
    assert torch.equal(x[:, :, :2], source[:, :, :2])
    for j in range(P.N):
        sigma = warp(strength * (j + 1) / P.N)
        f = slice(2 + 2 * j, 4 + 2 * j)
        assert torch.allclose(x[:, :, f], (1 - sigma) * source[:, :, f] + sigma * eps[:, :, f], atol=1e-6)
    assert stream.state.source.shape[2] == 2  # frames beyond B wait for admission
    assert stream.state.sigma.max().item() == pytest.approx(warp(strength))


def test_video_to_video_stream_keeps_frames_aligned_and_stops_cleanly_when_input_runs_out():
    P = Partition(K=0, N=2, c=2, s=1)
    source = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(1, 1, 8, 2, 2).contiguous()
    stream = Streamer(zero_velocity, P, (1, 2, 2), seed=0)
    stream.fill_video(source[:, :, :6], strength=0.02)
    out = [stream.next_chunk()]  # admits source frames 4, 5
    before = stream.state.clone()
    with pytest.raises(StreamError, match="needs 2 more source frames"):
        stream.next_chunk()
    assert torch.equal(stream.state.x, before.x) and stream.state.calls == before.calls
    stream.feed(source[:, :, 6:8])
    stream.feed(source[:, :, 7:8].expand(-1, -1, 4, -1, -1))  # flush: the last frame N * c times
    out += [stream.next_chunk() for _ in range(3)]
    frames = torch.cat([c.latents for c in out], dim=2)[0, 0, :, 0, 0]
    assert [c.index for c in out] == [0, 2, 4, 6]
    # Strength 0.02 keeps 98% of the source: frame i is still source frame i.
    assert torch.allclose(frames, torch.arange(8.0), atol=0.15)


# ---------------------------------------------------------------------------------------------
# Errors and memory

def test_bad_inputs_are_refused_and_a_bad_model_loses_nothing():
    with pytest.raises(TypeError, match="Partition"):
        Streamer(zero_velocity, (0, 2, 2, 1), (1, 2, 2))
    with pytest.raises(ValueError, match="latent_shape"):
        Streamer(zero_velocity, Partition(0, 2, 2, 1), (1, 2))
    stream = Streamer(zero_velocity, Partition(0, 2, 2, 1), (1, 2, 2))
    with pytest.raises(ValueError, match="at least B=4"):
        stream.fill_video(torch.zeros(1, 1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"got \[1, 2, 4, 2, 2\]"):
        stream.feed(torch.zeros(1, 2, 4, 2, 2))

    before = stream.state.clone()
    stream.model = lambda x, sigma, text: x[:, :, :1]
    with pytest.raises(StreamError, match=r"returned \[1, 1, 1, 2, 2\]"):
        stream.step()
    assert torch.equal(stream.state.x, before.x) and stream.state.calls == before.calls


def _held_tensors():
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on some torch module objects warns
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    return len(tensors), sum(t.numel() * t.element_size() for t in tensors)


def test_a_long_stream_holds_no_growing_state(tiny_model):
    stream = Streamer(tiny_model, Partition.streamdit(16, 8, s=1), SHAPE, text=random_text(), seed=0)
    stream.warm_start()
    shapes, held = None, None
    frames = 0
    for chunk in stream.chunks(1250):  # 10,000 frames
        frames += chunk.frames
        if chunk.index % 1000 == 0:
            now_shapes = [tuple(t.shape) for t in stream.state.tensors()]
            now_held = _held_tensors()
            if shapes is None:
                shapes, held = now_shapes, now_held
            assert now_shapes == shapes
            assert now_held == held, f"tensors held grew at frame {chunk.index}"
    assert frames == 10_000 and stream.state.next_index == 10_000 + 16
