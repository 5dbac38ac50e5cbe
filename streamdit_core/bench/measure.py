"""Measuring: timed model calls per variant, counted FLOPs, the codec per chunk, the stream end to end."""

from __future__ import annotations

import dataclasses
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..accel import DTYPES, Accelerated, accelerate
from ..codec import ChunkDecoder, VideoAutoencoder
from ..conditioning import TextEmbedding
from ..guidance import Guided
from ..model import StreamDiT, StreamDiTConfig
from ..schedule import Partition, frame_sigma_table
from ..velocity import CallCounter
from .rows import BENCH_PRESETS, BenchReport, DecoderResult, StreamResult, Variant, VariantResult

__all__ = ["ContentionRow", "RandomText", "Subject", "checkpoint_subject", "count_flops", "matmul_peak",
           "measure_contention", "measure_decoder", "measure_stream", "measure_variant", "preset_subject", "run_bench"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of ``fn()`` between device synchronisations."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return 1000 * (time.perf_counter() - t0)


def matmul_peak(device: torch.device, precision: str, size: int | None = None, repeats: int = 5) -> float:
    """The device's matmul rate in FLOP/s for ``precision``: the best of ``repeats`` square
    products (``size`` default 8192 on CUDA, 1024 on a CPU)."""
    n = size or (8192 if device.type == "cuda" else 1024)
    gen = torch.Generator(device=device).manual_seed(0)
    if precision == "fp8":
        a = torch.randn(n, n, device=device, generator=gen).to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device=device, generator=gen).to(torch.float8_e4m3fn).t()
        one = torch.ones((), device=device)
        out = torch.bfloat16 if device.type == "cuda" else torch.float32

        def product():
            return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=out)
    else:
        dtype = DTYPES[precision]
        a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)

        def product():
            return a @ b
    product()  # warm-up
    best = min(_timed(product, device) for _ in range(repeats))
    return 2 * n ** 3 / (best / 1000)


def count_flops(model, x: torch.Tensor, sigma: torch.Tensor, text) -> float:
    """FLOPs of one call, counted by torch's FLOP counter (matmuls and attention).

    Attention runs on sdpa's math kernel while counting: the counter has no formula for the
    fused CPU kernels and would count their attention as zero.
    """
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(x, sigma, text)
    return float(counter.get_total_flops())


class RandomText:
    """A text encoder stand-in for random-weight subjects: ``tokens`` random token states per
    prompt (fixed per prompt), width ``dim``."""

    def __init__(self, dim: int, tokens: int):
        self.dim, self.tokens = dim, tokens

    def encode(self, prompts: str | Sequence[str]) -> TextEmbedding:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        states = [torch.randn(self.tokens, self.dim, generator=torch.Generator().manual_seed(sum(map(ord, p))))
                  for p in prompts]
        return TextEmbedding(torch.stack(states))


@dataclass
class Subject:
    """What is benchmarked: builds the model (per attention kind), the codec and the text."""

    name: str
    about: str
    config: StreamDiTConfig
    build_model: Callable[[StreamDiTConfig, torch.device], StreamDiT]
    codec: Any
    text: Any
    partition: Partition
    fps: int
    guidance: float = 1.0


def preset_subject(name: str, device: torch.device, partition: Partition | None = None) -> Subject:
    """A :data:`BENCH_PRESETS` shape with random weights (seeded, every parameter non-zero)."""
    if name not in BENCH_PRESETS:
        raise ValueError(f"unknown bench preset {name!r}; presets: {', '.join(BENCH_PRESETS)} (or --model PATH)")
    preset = BENCH_PRESETS[name]

    def build(config: StreamDiTConfig, dev: torch.device) -> StreamDiT:
        torch.manual_seed(0)
        with torch.device(dev):
            model = StreamDiT(config)
        with torch.no_grad():
            for p in model.parameters():  # switch on the zero-initialised gates and output layer
                p.add_(torch.randn_like(p), alpha=0.02)
        return model.eval()

    torch.manual_seed(0)
    codec = VideoAutoencoder(preset.codec).to(device).eval()
    return Subject(name, preset.about, preset.model, build, codec, RandomText(preset.model.text_dim, preset.text_tokens),
                   partition or preset.partition, preset.fps)


def checkpoint_subject(path: str | Path, device: torch.device, partition: Partition | None = None,
                       guidance: float | None = None) -> Subject:
    """A trained checkpoint with its own codec and text encoder."""
    from ..checkpoint import load_checkpoint
    from ..pipeline import Pipeline

    pipe = Pipeline.load(path, device=device, fast=None)
    state = pipe.model.state_dict()

    def build(config: StreamDiTConfig, dev: torch.device) -> StreamDiT:
        if config == pipe.model.config:
            return load_checkpoint(pipe.path, device=dev).eval()
        model = StreamDiT(config).to(dev)  # the same weights under another attention layout
        model.load_state_dict(state)
        return model.eval()

    return Subject(str(path), f"checkpoint {pipe.path}", pipe.model.config, build, pipe.codec, pipe.text,
                   partition or pipe.default_partition(), pipe.fps, pipe.guidance if guidance is None else guidance)


def _frame_size(subject: Subject) -> tuple[int, int]:
    f = getattr(subject.codec, "space_factor", 1)
    H, W = subject.config.latent_size
    return H * f, W * f


def _inputs(subject: Subject, device: torch.device):
    cfg, P = subject.config, subject.partition
    if P.B != cfg.buffer_frames:
        raise ValueError(f"partition {P} has B={P.B} frames but the model's buffer holds {cfg.buffer_frames}; "
                         f"choose K + N*c = {cfg.buffer_frames}")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_channels, P.B, *cfg.latent_size, generator=gen).to(device)
    sigma = frame_sigma_table(P, cfg.warp)[0].float()[None].to(device)  # [1, B]: the stream's own levels
    text = subject.text.encode("a benchmark prompt").to(device)
    return x, sigma, text


def _velocity(model, guidance: float):
    return model if guidance == 1.0 else Guided(model, guidance)


def measure_variant(subject: Subject, variant: Variant, device: torch.device, calls: int, warmup: int,
                    peaks: dict[str, float], reference: torch.Tensor | None,
                    log: Callable[[str], None]) -> tuple[VariantResult, Any, torch.Tensor | None]:
    """Times one variant's model calls; returns the result, the accelerated model (unguided)
    and its output on the timing input."""
    P = subject.partition
    tf = getattr(subject.codec, "time_factor", 1)
    result = VariantResult(variant.label, frames_per_call=P.c * tf / P.s)
    why = variant.unavailable(device)
    if why:
        result.skipped = why
        return result, None, None
    config = subject.config if variant.attention == "window" else dataclasses.replace(subject.config, window=None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = subject.build_model(config, device)
    x, sigma, text = _inputs(subject, device)
    path = variant.path(device)
    result.flops = count_flops(_velocity(model.to(DTYPES[path.dtype]), subject.guidance), x, sigma, text)
    runnable = accelerate(model, path)
    fast = _velocity(runnable, subject.guidance)
    if variant.precision not in peaks:
        peaks[variant.precision] = matmul_peak(device, variant.precision)
    result.peak_flops = peaks[variant.precision]
    with torch.inference_mode():
        out: list[torch.Tensor] = []
        result.first_call_ms = _timed(lambda: out.append(fast(x, sigma, text)), device)
        for _ in range(warmup):
            fast(x, sigma, text)
        for i in range(calls):
            result.call_ms.append(_timed(lambda: fast(x, sigma, text), device))
    if reference is not None and variant.attention == "window":
        result.max_abs_diff = float((out[0].float() - reference.float()).abs().max())
    if device.type == "cuda":
        result.peak_memory = torch.cuda.max_memory_allocated(device)
    log(f"{variant.label}: first call {result.first_call_ms:.0f} ms, median {result.median_ms:.2f} ms, "
        f"{result.fps:.1f} video frames/s (model only)")
    return result, runnable, out[0]


def measure_stream(subject: Subject, velocity: Accelerated, label: str, device: torch.device, frames: int,
                   threaded: bool | None, cpu_threads: int | str | None = "auto") -> StreamResult:
    """A fresh stream through the runtime: warm start, ``frames`` video frames, decoded
    (``cpu_threads``: the runtime's CPU thread policy, see :class:`~streamdit_core.runtime.Runtime`)."""
    from ..pipeline import Pipeline
    from ..runtime import Runtime
    from ..session import Session

    result = StreamResult(label)
    counter = CallCounter(velocity)  # every network evaluation, both branches of a guided call
    pipe = Pipeline(velocity.model, subject.codec, subject.text, subject.fps, accelerated=counter)
    tf = pipe.frames_per_latent
    result.frames_per_chunk = subject.partition.c * tf
    # The decoder-cost line: one chunk decoded on its own, after a warm-up.
    decoder = ChunkDecoder(subject.codec)
    cfg = subject.config
    chunk = torch.randn(1, cfg.in_channels, subject.partition.c, *cfg.latent_size).to(device)
    with torch.inference_mode():
        decoder.decode(chunk)
        result.decode_alone_ms = statistics.median(_timed(lambda: decoder.decode(chunk), device) for _ in range(5))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    session = Session(pipe, "a benchmark prompt", subject.partition, guidance=subject.guidance)
    session.start(warm=True)
    _sync(device)
    result.warm_start_s = time.perf_counter() - t0
    before = counter.samples
    runtime = Runtime(session, threaded=threaded, cpu_threads=cpu_threads)
    result.threaded = runtime.threaded
    made = 0
    for out in runtime.video(frames):
        if made == 0:
            result.first_frame_s = time.perf_counter() - t0
        made += out.frames.shape[0]
    result.wall_s = runtime.stats.wall
    result.frames = runtime.stats.frames
    result.calls = runtime.stats.calls
    result.branches = counter.samples - before
    result.call_ms = runtime.stats.median_call_ms
    result.decode_ms = runtime.stats.median_decode_ms
    result.threads = runtime.stats.threads
    if device.type == "cuda":
        result.peak_memory, result.memory_kind = torch.cuda.max_memory_allocated(device), "CUDA allocated"
    else:
        result.peak_memory, result.memory_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process RSS"
    return result


def measure_decoder(subject: Subject, device: torch.device, chunks: int = 10) -> DecoderResult:
    """Times the subject's codec decoding ``chunks`` chunks in a row (after one untimed chunk),
    with the left context carried over as a stream does; FLOPs of one chunk counted."""
    cfg, P = subject.config, subject.partition
    decoder = ChunkDecoder(subject.codec)
    gen = torch.Generator().manual_seed(0)
    latents = [torch.randn(1, cfg.in_channels, P.c, *cfg.latent_size, generator=gen).to(device) for _ in range(chunks + 1)]
    with torch.inference_mode():
        decoder.decode(latents[0])
        counter = FlopCounterMode(display=False)
        with counter:
            ChunkDecoder(subject.codec, tail=decoder.tail).decode(latents[1])
        times = [_timed(lambda z=z: decoder.decode(z), device) for z in latents[1:]]
    tf = getattr(subject.codec, "time_factor", 1)
    return DecoderResult(_frame_size(subject), P.c * tf, times, float(counter.get_total_flops()))


def run_bench(subject: Subject, device: torch.device, variants: Sequence[Variant], calls: int = 20,
              warmup: int = 3, stream_frames: int = 64, threaded: bool | None = None,
              log: Callable[[str], None] = lambda line: None) -> BenchReport:
    """Measures every variant, then streams with the fastest one (see the module docstring)."""
    if calls < 1 or warmup < 0 or stream_frames < 0:
        raise ValueError(f"need calls >= 1, warmup >= 0, stream_frames >= 0; got {calls}, {warmup}, {stream_frames}")
    peaks: dict[str, float] = {}
    results: list[VariantResult] = []
    best: tuple[float, Any, str] | None = None
    reference = None
    for variant in variants:
        result, runnable, out = measure_variant(subject, variant, device, calls, warmup, peaks, reference, log)
        if reference is None and out is not None and variant.attention == "window":
            reference = out
        results.append(result)
        if runnable is not None and (best is None or result.median_ms < best[0]):
            best = (result.median_ms, runnable, result.label)
    stream = None
    if best is not None and stream_frames:
        log(f"streaming {stream_frames} frames with {best[2]} ...")
        stream = measure_stream(subject, best[1], best[2], device, stream_frames, threaded)
    cfg, P = subject.config, subject.partition
    tf = getattr(subject.codec, "time_factor", 1)
    tokens = P.B * (cfg.latent_size[0] // cfg.patch_size) * (cfg.latent_size[1] // cfg.patch_size)
    with torch.device("meta"):
        params = sum(p.numel() for p in StreamDiT(cfg).parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return BenchReport(subject.name, subject.about, f"{device} ({name}, {torch.get_num_threads()} threads)"
                       if device.type == "cpu" else f"{device} ({name})", torch.__version__, P, _frame_size(subject),
                       P.c * tf / P.s, tokens, params, subject.guidance, calls, results, stream, peaks)


# A competing job: a 2-thread float32 matmul loop, what a second heavy process on the cores does.
_COMPETITOR = ("import torch; torch.set_num_threads(2); a = torch.randn(1024, 1024); print('ready', flush=True)\n"
               "while True: a @ a")


@dataclass
class ContentionRow:
    """One thread policy's stream, quiet and beside the competing job (video FPS with decoding)."""

    policy: str
    quiet_fps: list[float]
    contended_fps: list[float]
    threads_used: list[int | None]  # CPU threads at the end of each contended run

    @property
    def slowdown(self) -> float:
        """Median quiet FPS over median contended FPS (1: no slowdown)."""
        return statistics.median(self.quiet_fps) / max(1e-9, statistics.median(self.contended_fps))


def measure_contention(subject: Subject, velocity, device: torch.device, frames: int,
                       policies: Sequence[int | str] = ("auto", 1, 2), repeats: int = 3,
                       log: Callable[[str], None] = lambda line: None) -> list[ContentionRow]:
    """Streams ``frames`` frames ``repeats`` times per CPU thread policy, first on quiet cores,
    then beside a competing 2-thread matmul job started here (and stopped after)."""
    import subprocess
    import sys

    rows = [ContentionRow(str(p), [], [], []) for p in policies]
    for contended in (False, True):
        job = None
        if contended:
            job = subprocess.Popen([sys.executable, "-c", _COMPETITOR], stdout=subprocess.PIPE, text=True)
            job.stdout.readline()  # running
        try:
            for _ in range(repeats):
                for row, policy in zip(rows, policies):
                    result = measure_stream(subject, velocity, row.policy, device, frames, False, policy)
                    (row.contended_fps if contended else row.quiet_fps).append(result.fps)
                    if contended:
                        row.threads_used.append(result.threads)
                    log(f"{'contended' if contended else 'quiet'} {row.policy}: {result.fps:.1f} FPS")
        finally:
            if job is not None:
                job.kill()
                job.wait()
    return rows
