"""Evaluation protocols on the synthetic world's held-out combinations.

- :func:`compare_schemes`: one model, several inference schemes (our version of the paper's
  Table 2): every held-out scene streamed for the same length with each scheme, scored by
  :mod:`~streamdit_core.world.metrics`.
- :func:`drift`: a long stream per scene; adherence and pixel statistics of its first and last
  ten seconds.
- :func:`prompt_switch`: a scene switched mid-stream to one that differs in one attribute; how
  long the detector takes to see the new value, whether the other attributes stay, and how
  noisy the frames after it are, in each switch mode.
- :func:`codec_round_trip`: world clips encoded and decoded; the codec's own ceiling on every
  score, and its error at the subject's outline (fringes), inside it and on the background.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .scenes import FPS, Scene, World, held_out_scenes
from .metrics import NOISY, VideoScores, _heading, _majority, _steps, detect, score_video, strays, summarize
from ..pipeline import Pipeline
from ..prompts import PromptSchedule, PromptSwitch
from ..schedule import Partition
from ..velocity import CallCounter, placement

__all__ = ["SCHEMES", "CodecResult", "SchemeResult", "codec_round_trip", "compare_schemes", "drift", "fair_partition",
           "prompt_switch", "scheme_partition", "seams"]

# name -> description. With a given T every scheme uses T denoising steps per frame; by default
# each gets the model calls per video frame of the model's own partition (see fair_partition).
SCHEMES = {
    "uniform": "chunk extension: K=2 clean frames of the last clip, the other B-2 denoised together",
    "diagonal": "c=1 (FIFO-style): one latent frame per chunk",
    "streamdit-c2": "c=2",
    "streamdit-c4": "c=4",
    "streamdit-c2-k2": "c=2 with K=2 clean reference frames (the last two emitted) kept as context",
}


def scheme_partition(name: str, B: int, T: int) -> Partition:
    """The partition a scheme name stands for, for a buffer of B frames and T steps."""
    if name == "uniform":
        return Partition(K=2, N=1, c=B - 2, s=T)
    if name == "diagonal":
        return Partition.streamdit(B, 1, T=T)
    found = re.fullmatch(r"streamdit-c(\d+)(?:-k(\d+))?", name)
    if found:
        K = int(found[2] or 0)
        c = int(found[1])
        if (B - K) % c or B - K < c:
            raise ValueError(f"scheme {name!r} needs c={c} to divide the {B - K} frames of a buffer of {B} with K={K}")
        N = (B - K) // c
        # with references the chunk count may not divide T (N = 3 for T = 16): the nearest lower T
        return Partition.streamdit(B, c, T=max(N, T - T % N) if K else T, K=K)
    raise ValueError(f"unknown scheme {name!r}; schemes: {', '.join(SCHEMES)}, or any streamdit-cC-kK")


def fair_partition(name: str, B: int, calls_per_frame: float) -> Partition:
    """The partition of a scheme that spends ``calls_per_frame`` model calls per video frame (at
    least one micro step per chunk): ``s = round(c x calls_per_frame)``. For the distilled student
    (0.5 calls per frame at c = 2) the uniform scheme gets 3 steps for its 6 frames, not one."""
    P = scheme_partition(name, B, B)
    s = max(1, round(P.c * calls_per_frame))
    return Partition(K=P.K, N=P.N, c=P.c, s=s)


def _stream(pipe: Pipeline, schedules: list[PromptSchedule], partition: Partition, frames: int, seed: int,
            batch: int, overlap: bool = True, guidance: float = 1.0, switch: PromptSwitch | None = None) -> torch.Tensor:
    """``[len(schedules), frames, 3, H, W]``, streamed ``batch`` at a time."""
    out = []
    for i in range(0, len(schedules), batch):
        group = schedules[i:i + batch]
        parts = [chunk.frames if len(group) > 1 else chunk.frames[None]  # [b, t, 3, H, W]
                 for chunk in pipe.frames(group[0], partition, seed=seed + i, batch=len(group), schedules=group,
                                          overlap=overlap, guidance=guidance, frames=frames, switch=switch)]
        out.append(torch.cat(parts, 1))
    return torch.cat(out)


@dataclass
class SchemeResult:
    name: str
    partition: Partition
    calls_per_frame: float  # model calls per output video frame, counted by the stream
    seconds: float
    summary: dict[str, float]  # mean over every scene and seed
    scores: list[VideoScores] = field(default_factory=list, repr=False)  # seed by seed, scenes in order
    per_seed: list[dict[str, float]] = field(default_factory=list)  # each seed's summary, with its "seed"

    def spread(self, key: str) -> float:
        """Largest minus smallest per-seed mean of ``key`` (0 with one seed): how far the score moves
        with nothing but the noise changed."""
        values = [s[key] for s in self.per_seed] or [self.summary[key]]
        return max(values) - min(values)


def compare_schemes(pipe: Pipeline, schemes: list[str], scenes: list[Scene] | None = None, seconds: float = 4.0,
                    steps: int | None = None, seed: int = 0, batch: int = 32, progress: bool = True,
                    guidance: float = 1.0, seeds: int = 1) -> list[SchemeResult]:
    """Streams every scene with every scheme and scores the videos (``steps``: T for every scheme;
    None: each scheme at the model calls per frame of the model's own partition, see
    :func:`fair_partition`). With ``seeds`` > 1 every scene is streamed once per seed (``seed``,
    ``seed + 1``, ..., each stream exactly as a table with that ``seed``): the summary is the mean
    over all of them, and ``per_seed`` keeps each seed's, so a difference between two models can
    be read against the noise's own spread."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    scenes = scenes if scenes is not None else held_out_scenes()
    frames = int(seconds * pipe.fps)
    B = pipe.geometry.buffer_frames
    own = pipe.default_partition()
    results = []
    for name in tqdm(schemes, desc="schemes", disable=not progress):
        if steps is None:
            P = fair_partition(name, B, own.s / own.c)
        else:
            P = scheme_partition(name, B, steps)
        schedules = [PromptSchedule.single(s.caption) for s in scenes]
        t0 = time.perf_counter()
        calls = _count_calls(pipe, P, frames, seed, guidance)
        scores, per_seed = [], []
        for k in range(seeds):
            video = _stream(pipe, schedules, P, frames, seed + k, batch, guidance=guidance)
            these = [score_video(v, s) for v, s in zip(video, scenes)]
            per_seed.append({"seed": seed + k, **summarize(these)})
            scores += these
        elapsed = time.perf_counter() - t0
        results.append(SchemeResult(name, P, calls, elapsed, summarize(scores), scores, per_seed))
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
    first: dict[str, float]  # means over every scene (and seed)
    last: dict[str, float]
    per_seed: list[dict] = field(default_factory=list)  # each seed's {"seed", "first", "last"}

    def change(self, key: str) -> float:
        """Last window minus first window of ``key``, over every scene and seed."""
        return self.last[key] - self.first[key]


def drift(pipe: Pipeline, scenes: list[Scene], seconds: float = 120.0, partition: Partition | None = None,
          seed: int = 0, window_seconds: float = 10.0, guidance: float = 1.0, seeds: int = 1) -> DriftResult:
    """Streams each scene for ``seconds``; scores its first and last ``window_seconds``. With
    ``seeds`` > 1 each scene is streamed once per seed (``seed``, ``seed + 1``, ...): the first and
    last windows are means over all of them, and ``per_seed`` keeps each seed's."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    frames = int(seconds * pipe.fps)
    w = int(window_seconds * pipe.fps)
    schedules = [PromptSchedule.single(s.caption) for s in scenes]
    P = partition or pipe.default_partition()
    firsts, lasts, per_seed = [], [], []
    for k in range(seeds):
        video = _stream(pipe, schedules, P, frames, seed + k, len(scenes), guidance=guidance)
        first = [score_video(v[:w], s) for v, s in zip(video, scenes)]
        last = [score_video(v[-w:], s) for v, s in zip(video, scenes)]
        per_seed.append({"seed": seed + k, "first": summarize(first), "last": summarize(last)})
        firsts += first
        lasts += last
    return DriftResult(seconds, summarize(firsts), summarize(lasts), per_seed)


@dataclass
class SwitchResult:
    attribute: str
    switched: float  # share of streams whose detected attribute took the new value
    latency: float  # mean seconds from the switch to the new value (switched streams)
    within_2s: float  # share switched within 2 seconds
    kept: float  # share of streams whose other attributes stayed as asked after the switch
    mode: str = "immediate"
    noisy: float = 0.0  # share of frames after the switch whose background is noisy (metrics.NOISY)
    noise: float = 0.0  # the noisiest background after the switch (metrics.detect's noise)
    # share of streams with a frame in the 2 s after the switch whose switched attribute reads
    # neither the old nor the new value (metrics.strays); None for direction, read over windows
    stray: float | None = None


def prompt_switch(pipe: Pipeline, scenes: list[Scene], attribute: str, at: float = 3.0, seconds: float = 7.0,
                  partition: Partition | None = None, seed: int = 0, guidance: float = 1.0,
                  switch: PromptSwitch | None = None) -> SwitchResult:
    """Switches one attribute at ``at`` seconds (in ``switch``'s mode); measures when the detector
    sees it change, whether the others stay, how noisy the backgrounds are after it, and whether
    a stream passes through a third value on the way (a red subject switched to blue that shows
    purple for a frame)."""
    switch = switch or PromptSwitch()
    gen = torch.Generator().manual_seed(seed)
    world = World()
    scripts = [world.switch_script(gen, s, attribute, 1) for s in scenes]
    schedules = [PromptSchedule(((0.0, a.caption), (at, b.caption))) for (_, a), (_, b) in scripts]
    frames = int(seconds * pipe.fps)
    video = _stream(pipe, schedules, partition or pipe.default_partition(), frames, seed, len(scenes),
                    guidance=guidance, switch=switch)
    start = int(at * pipe.fps)
    lat, ok, kept, noise, stray = [], 0, 0, [], 0
    half = FPS // 2
    per_frame = attribute != "direction"  # headings are read over windows
    for v, ((_, old), (_, new)) in zip(video, scripts):
        det = detect(v)
        noise.append(det.noise[start:])
        if per_frame:
            values = getattr(det, attribute)[start:start + 2 * pipe.fps]
            stray += strays(values, getattr(old, attribute), getattr(new, attribute)) > 0
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
    noise_t = torch.cat(noise)
    return SwitchResult(attribute, ok / n, sum(lat) / max(1, len(lat)), sum(x <= 2.0 for x in lat) / n, kept / n,
                        switch.mode, float((noise_t > NOISY).float().mean()), float(noise_t.max()),
                        stray / n if per_frame else None)


def _attribute(det, attribute: str, t: int, half: int):
    """The detected attribute around frame ``t`` (direction: mean heading over ``half`` frames)."""
    lo, hi = max(0, t - half // 2), t + half // 2 + 1
    if attribute == "direction":
        return _heading(_steps(det.center[lo:hi], det.size))
    values = {"color": det.color, "shape": det.shape, "background": det.background}[attribute][lo:hi]
    return _majority(list(values))


@dataclass
class CodecResult:
    """A codec's round trip of world clips: adherence of the decoded clips and where the error sits."""

    clips: int
    source: dict[str, float]  # scores of the source clips (the ceiling: 1 for adherence)
    decoded: dict[str, float]  # scores of the decoded clips
    edge_error: float  # mean absolute RGB error (0..1) within 3 pixels of the source subject's outline
    inside_error: float  # the same inside the subject, farther than 3 pixels from the outline
    background_error: float  # the same on the background, farther than 3 pixels from the outline
    switch_noise: float = 0.0  # background noise (metrics.detect) of the first frame after a background change
    steady_noise: float = 0.0  # the same on the frames of the constant clips


def codec_round_trip(codec, scenes: list[Scene], seconds: float = 2.0, seed: int = 0, size: int = 64) -> CodecResult:
    """Encodes and decodes one world clip per scene (wrapping borders included) and scores both."""
    from .metrics import torus_dilate

    gen = torch.Generator().manual_seed(seed)
    world = World(size=size)
    frames = int(seconds * FPS)
    frames -= frames % codec.time_factor
    clips = [world.render(s, frames, gen) for s in scenes]
    video = torch.stack([c.frames for c in clips])  # [n, T, 3, H, W]
    dev, _ = placement(codec)
    with torch.no_grad():
        decoded = codec.decode(codec.encode(video.transpose(1, 2).to(dev))).transpose(1, 2).float().cpu()
    src = [score_video(v, s) for v, s in zip(video, scenes)]
    dec = [score_video(v, s) for v, s in zip(decoded, scenes)]
    bg = video.flatten(3).median(dim=3).values[..., None, None]  # [n, T, 3, 1, 1]
    inside = ((video - bg).norm(dim=2) > 0.25).flatten(0, 1)  # [nT, H, W]
    grown, shrunk = torus_dilate(inside, 3), ~torus_dilate(~inside, 3)
    ring, core, far = grown & ~shrunk, shrunk, ~grown
    err = (decoded - video).abs().mean(2).flatten(0, 1)  # [nT, H, W]

    def mean_on(m):
        return float((err * m).sum() / m.sum().clamp_min(1))

    # Clips whose background changes half way: the causal decoder reads the frame before.
    at = frames // 2 - (frames // 2) % codec.time_factor
    changed = torch.stack([world.render(world.switch_script(gen, s, "background", at), frames, gen).frames
                           for s in scenes])
    with torch.no_grad():
        out = codec.decode(codec.encode(changed.transpose(1, 2).to(dev))).transpose(1, 2).float().cpu()
    switch_noise = sum(float(detect(v[at:at + 1]).noise[0]) for v in out) / len(scenes)
    steady = float(torch.cat([detect(v).noise for v in decoded]).mean())
    return CodecResult(len(scenes), summarize(src), summarize(dec), mean_on(ring), mean_on(core), mean_on(far),
                       switch_noise, steady)
