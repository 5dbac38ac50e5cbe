"""The threaded runtime: the same frames as one thread, errors surfaced, stats consistent."""

import time

import pytest
import torch

from helpers import PIXEL_CONFIG, Words, randomized
from streamdit_core import Partition
from streamdit_core.codec import PixelCodec
from streamdit_core import Pipeline, PromptSchedule, PromptSwitch
from streamdit_core.runtime import Runtime

P = Partition(K=1, N=3, c=1, s=2)
STORY = PromptSchedule(((0.0, "ab"), (1.0, "abcdef"), (2.5, "abc")))


def _pipe():
    return Pipeline(randomized(PIXEL_CONFIG), PixelCodec(), Words(), fps=4)


def _single_thread(pipe, frames, mode):
    session = pipe.session("ab", P, seed=3, guidance=2.0, switch=PromptSwitch(mode))
    out = [session.start().frames]
    made = out[0].shape[0]
    while made < frames:
        session.follow(STORY)
        chunk = session.step()
        if chunk is not None:
            out.append(chunk.frames)
            made += chunk.frames.shape[0]
    return torch.cat(out), session.calls


@pytest.mark.parametrize("threaded", [True, False], ids=["threaded", "inline"])
@pytest.mark.parametrize("mode", ["immediate", "chunk", "blend"])
def test_runtime_frames_are_bit_identical_to_stepping_the_session(mode, threaded):
    pipe = _pipe()
    expected, calls = _single_thread(pipe, 17, mode)
    session = pipe.session("ab", P, seed=3, guidance=2.0, switch=PromptSwitch(mode))
    opening = session.start().frames
    warm_calls = session.calls
    runtime = Runtime(session, STORY, queue_chunks=1, threaded=threaded)
    got = [opening]
    for chunk in runtime.run(frames=17 - opening.shape[0]):
        got.append(chunk.frames)
        time.sleep(0.01)  # a slow consumer: the queues fill and the threads wait
    assert torch.equal(torch.cat(got), expected)
    stats = runtime.stats
    assert session.calls == calls and stats.calls == calls - warm_calls
    assert stats.frames == 16 and len(stats.decode_ms) == 16 and len(stats.call_ms) == stats.calls
    assert stats.fps == pytest.approx(stats.frames / stats.wall) and 0 < stats.first_frame <= stats.wall
    if threaded:
        assert stats.decode_stalls + stats.denoise_stalls > 0
    assert Runtime(session).threaded is False  # the CPU default


def test_prompts_posted_while_running_take_over():
    pipe = _pipe()
    posted = ["abcdefgh"]
    session = pipe.session("ab", P, seed=0)
    session.start()
    runtime = Runtime(session, STORY, prompt_source=lambda: posted.pop() if posted else None, threaded=True)
    list(runtime.run(frames=8))
    assert session.prompts == ["abcdefgh"]  # the schedule no longer applies


class Boom(RuntimeError):
    pass


def test_an_error_on_the_denoise_thread_reaches_the_caller():
    pipe = _pipe()
    session = pipe.session("ab", P, seed=0, before_call=lambda: (_ for _ in ()).throw(Boom("interrupted"))
                           if session.calls >= 9 else None)
    session.start(warm=False)
    runtime = Runtime(session, threaded=True)
    got = []
    with pytest.raises(Boom, match="interrupted"):
        for chunk in runtime.run():
            got.append(chunk)
    assert len(got) == 4 and session.calls == 9  # everything made before the error came out


def test_stopping_early_joins_the_threads():
    pipe = _pipe()
    session = pipe.session("ab", P, seed=0)
    session.start(warm=False)
    run = Runtime(session, queue_chunks=1, threaded=True).run()
    next(run)
    run.close()
    calls = session.calls
    time.sleep(0.2)
    assert session.calls == calls  # nothing runs after the caller stopped


@pytest.mark.parametrize("batch", [1, 2])
def test_video_opens_with_the_reference_frames_and_cuts_to_the_exact_length(batch):
    """``Runtime.video`` is the one loop every caller streams a video through: the opening
    reference frames first, then chunks, the last one cut so exactly the asked frames come out."""
    pipe = _pipe()
    whole = pipe.session(["ab"] * batch, P, seed=3, batch=batch)
    opening = whole.start()
    expected = [opening.frames] + [whole.next_chunk().frames for _ in range(6)]
    expected = torch.cat(expected, dim=-4)  # [(b,) 1 + 6, 3, H, W]
    for frames in (1, 4, 5):
        session = pipe.session(["ab"] * batch, P, seed=3, batch=batch)
        got = list(Runtime(session, threaded=False).video(frames, session.start()))
        video = torch.cat([c.frames for c in got], dim=-4)
        assert video.shape[-4] == frames and torch.equal(video, expected.narrow(-4, 0, frames))
        # the opening's 4N = 12 calls, then s = 2 per frame: no call past the last frame
        assert got[0].index == 0 and session.calls == 12 + 2 * (frames - 1)


def test_a_small_model_streams_on_one_cpu_thread_and_torch_keeps_its_setting():
    """On shared cores, spinning OpenMP threads of a model too small to gain from them collapse
    the stream (BENCHMARKS.md): the runtime streams such a model on one thread, a larger one on
    torch's count, and gives torch its own setting back."""
    from streamdit_core.runtime import SMALL_MODEL_FLOPS, auto_cpu_threads, call_flops

    pipe = _pipe()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        session = pipe.session("ab", P, seed=3)
        runtime = Runtime(session, threaded=False)
        list(runtime.video(6, session.start()))
        assert runtime.stats.threads == 1 and torch.get_num_threads() == 2
        fixed = Runtime(pipe.session("ab", P, seed=3), threaded=False, cpu_threads=2)
        list(fixed.video(4))
        assert fixed.stats.threads == 2
    finally:
        torch.set_num_threads(before)
    assert call_flops(pipe.model) < SMALL_MODEL_FLOPS and auto_cpu_threads(pipe.model) == 1
    big = call_flops(pipe.model, batch=int(SMALL_MODEL_FLOPS / call_flops(pipe.model)) + 1)
    assert big > SMALL_MODEL_FLOPS
    assert call_flops(lambda x, sigma, text: x) is None  # a bare field (or a host adapter): torch decides
    with pytest.raises(ValueError, match="cpu_threads"):
        Runtime(pipe.session("ab", P), cpu_threads=0)


def test_a_realtime_video_is_paced_to_its_frame_rate():
    """A live stream that computes faster than it plays is held to its frame rate (at most the
    lead ahead of the wall clock), with the same frames as an unpaced one."""
    pipe = _pipe()  # 4 fps, one latent frame per chunk
    fast = list(Runtime(pipe.session("ab", P, seed=3), threaded=False).video(6))
    t0 = time.perf_counter()
    paced = list(Runtime(pipe.session("ab", P, seed=3), threaded=False).video(6, realtime=True, lead=0.25))
    wall = time.perf_counter() - t0
    assert wall >= 5 / 4 - 0.25 - 0.05  # the sixth frame is due 1.25 s into the video
    assert all(torch.equal(a.frames, b.frames) for a, b in zip(fast, paced))
