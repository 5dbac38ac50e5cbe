"""Evaluation protocols on the synthetic world's held-out combinations.

- :func:`compare_schemes`: one model, several inference schemes (our version of the paper's
  Table 2): every held-out scene streamed for the same length with each scheme, scored by
  :mod:`~streamdit_core.world.metrics`.
- :func:`drift`: a long stream per scene; adherence and pixel statistics of its first and last
  ten seconds.
- :func:`prompt_switch`: a scene switched mid-stream to one that differs in one attribute; how
  long the detector takes to see the new value, and whether the other attributes stay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .scenes import FPS, Scene, World, held_out_scenes
from .metrics import VideoScores, _heading, _majority, _steps, detect, score_video, summarize
from ..pipeline import Pipeline
from ..prompts import PromptSchedule
from ..schedule import Partition
from ..velocity import CallCounter

__all__ = ["SCHEMES", "scheme_partition", "compare_schemes", "drift", "prompt_switch", "seams", "SchemeResult"]

# name -> description; every scheme uses the same number of denoising steps T per frame, or the
# model's own (one per chunk for a distilled student).
SCHEMES = {
    "uniform": "chunk extension: K=2 clean frames of the last clip, the other B-2 denoised together",
    "diagonal": "c=1 (FIFO-style): one latent frame per chunk",
    "streamdit-c2": "c=2",
    "streamdit-c4": "c=4",
}


def scheme_partition(name: str, B: int, T: int) -> Partition:
    """The partition a scheme name stands for, for a buffer of B frames and T steps."""
    if name == "uniform":
        return Partition(K=2, N=1, c=B - 2, s=T)
    if name == "diagonal":
        return Partition.streamdit(B, 1, T=T)
    if name.startswith("streamdit-c"):
        return Partition.streamdit(B, int(name[len("streamdit-c"):]), T=T)
    raise ValueError(f"unknown scheme {name!r}; schemes: {', '.join(SCHEMES)}")


def _stream(pipe: Pipeline, schedules: list[PromptSchedule], partition: Partition, frames: int, seed: int,
            batch: int, overlap: bool = True, guidance: float = 1.0) -> torch.Tensor:
    """``[len(schedules), frames, 3, H, W]``, streamed ``batch`` at a time."""
    out = []
    for i in range(0, len(schedules), batch):
        group = schedules[i:i + batch]
        parts = [chunk.frames if len(group) > 1 else chunk.frames[None]  # [b, t, 3, H, W]
                 for chunk in pipe.frames(group[0], partition, seed=seed + i, batch=len(group), schedules=group,
                                          overlap=overlap, guidance=guidance, frames=frames)]
        out.append(torch.cat(parts, 1))
    return torch.cat(out)


@dataclass
class SchemeResult:
    name: str
    partition: Partition
    calls_per_frame: float  # model calls per output video frame, counted by the stream
    seconds: float
    summary: dict[str, float]
    scores: list[VideoScores] = field(default_factory=list, repr=False)


def compare_schemes(pipe: Pipeline, schemes: list[str], scenes: list[Scene] | None = None, seconds: float = 4.0,
                    steps: int | None = None, seed: int = 0, batch: int = 32, progress: bool = True,
                    guidance: float = 1.0) -> list[SchemeResult]:
    """Streams every scene with every scheme and scores the videos (``steps``: T for every scheme;
    None: the model's :meth:`~streamdit_core.pipeline.Pipeline.default_steps` for each scheme's N)."""
    scenes = scenes if scenes is not None else held_out_scenes()
    frames = int(seconds * pipe.fps)
    B = pipe.geometry.buffer_frames
    results = []
    for name in tqdm(schemes, desc="schemes", disable=not progress):
        if steps is None:  # T = B fits every scheme's N; only N is read from it
            P = scheme_partition(name, B, pipe.default_steps(scheme_partition(name, B, B).N))
        else:
            P = scheme_partition(name, B, steps)
        schedules = [PromptSchedule.single(s.caption) for s in scenes]
        t0 = time.perf_counter()
        calls = _count_calls(pipe, P, frames, seed, guidance)
        video = _stream(pipe, schedules, P, frames, seed, batch, guidance=guidance)
        elapsed = time.perf_counter() - t0
        scores = [score_video(v, s) for v, s in zip(video, scenes)]
        results.append(SchemeResult(name, P, calls, elapsed, summarize(scores), scores))
    return results


def _count_calls(pipe: Pipeline, P: Partition, frames: int, seed: int, guidance: float = 1.0) -> float:
    """Model calls per video frame over a stream of ``frames`` frames, warm start included (a
    guided call counts as two: it evaluates both branches, batched)."""
    got = 0
    counter = CallCounter(pipe.model)
    counting = Pipeline(counter, pipe.codec, pipe.text, pipe.fps, pipe.path)
    for chunk in counting.frames("a stream whose calls are counted", P, seed=seed, guidance=guidance):
        got += chunk.frames.shape[0]  # whole chunks: the calls made them all
        if got >= frames:
            break
    return counter.samples / got  # batch 1: one sample per branch


@dataclass
class SeamResult:
    """Frame change at chunk boundaries over frame change inside chunks (1 = no seam)."""

    overlap: float  # seam-free chunk decoding
    separate: float  # each chunk decoded alone
    chunk_frames: int


def seams(pipe: Pipeline, scenes: list[Scene], partition: Partition | None = None, seconds: float = 4.0,
          seed: int = 0, guidance: float = 1.0) -> SeamResult:
    """Streams the same latents twice, decoded with and without overlap, and measures seams."""
    from ..codec import seam_ratio

    P = partition or pipe.default_partition()
    frames = int(seconds * pipe.fps)
    schedules = [PromptSchedule.single(s.caption) for s in scenes]
    ratios = []
    for overlap in (True, False):
        video = _stream(pipe, schedules, P, frames, seed, len(scenes), overlap=overlap,
                        guidance=guidance)  # [n, T, 3, H, W]
        ratios.append(seam_ratio(video.transpose(1, 2), P.c * pipe.frames_per_latent))
    return SeamResult(ratios[0], ratios[1], P.c * pipe.frames_per_latent)


@dataclass
class DriftResult:
    seconds: float
    first: dict[str, float]
    last: dict[str, float]


def drift(pipe: Pipeline, scenes: list[Scene], seconds: float = 120.0, partition: Partition | None = None,
          seed: int = 0, window_seconds: float = 10.0, guidance: float = 1.0) -> DriftResult:
    """Streams each scene for ``seconds``; scores its first and last ``window_seconds``."""
    frames = int(seconds * pipe.fps)
    w = int(window_seconds * pipe.fps)
    video = _stream(pipe, [PromptSchedule.single(s.caption) for s in scenes], partition or pipe.default_partition(),
                    frames, seed, len(scenes), guidance=guidance)
    first = summarize([score_video(v[:w], s) for v, s in zip(video, scenes)])
    last = summarize([score_video(v[-w:], s) for v, s in zip(video, scenes)])
    return DriftResult(seconds, first, last)


@dataclass
class SwitchResult:
    attribute: str
    switched: float  # share of streams whose detected attribute took the new value
    latency: float  # mean seconds from the switch to the new value (switched streams)
    within_2s: float  # share switched within 2 seconds
    kept: float  # share of streams whose other attributes stayed as asked after the switch


def prompt_switch(pipe: Pipeline, scenes: list[Scene], attribute: str, at: float = 3.0, seconds: float = 7.0,
                  partition: Partition | None = None, seed: int = 0, guidance: float = 1.0) -> SwitchResult:
    """Switches one attribute at ``at`` seconds; measures when the detector sees it change."""
    gen = torch.Generator().manual_seed(seed)
    world = World()
    scripts = [world.switch_script(gen, s, attribute, 1) for s in scenes]
    schedules = [PromptSchedule(((0.0, a.caption), (at, b.caption))) for (_, a), (_, b) in scripts]
    frames = int(seconds * pipe.fps)
    video = _stream(pipe, schedules, partition or pipe.default_partition(), frames, seed, len(scenes),
                    guidance=guidance)
    start = int(at * pipe.fps)
    lat, ok, kept = [], 0, 0
    half = FPS // 2
    for v, ((_, old), (_, new)) in zip(video, scripts):
        det = detect(v)
        seen = None
        for t in range(start, frames - half):
            got = _attribute(det, attribute, t, half)
            # the new value, held for half a second
            if got == getattr(new, attribute) and all(_attribute(det, attribute, u, half) == got
                                                      for u in range(t, min(frames - half, t + half))):
                seen = t
                break
        if seen is not None:
            ok += 1
            lat.append((seen - start) / pipe.fps)
        others = [a for a in ("color", "shape", "direction", "background") if a != attribute]
        kept += all(_attribute(det, a, frames - half - 1, half) == getattr(new, a) for a in others)
    n = len(scenes)
    return SwitchResult(attribute, ok / n, sum(lat) / max(1, len(lat)), sum(x <= 2.0 for x in lat) / n, kept / n)


def _attribute(det, attribute: str, t: int, half: int):
    """The detected attribute around frame ``t`` (direction: mean heading over ``half`` frames)."""
    lo, hi = max(0, t - half // 2), t + half // 2 + 1
    if attribute == "direction":
        return _heading(_steps(det.center[lo:hi], det.size))
    values = {"color": det.color, "shape": det.shape, "background": det.background}[attribute][lo:hi]
    return _majority(list(values))
