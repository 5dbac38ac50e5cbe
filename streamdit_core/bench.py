"""``python -m streamdit_core bench``: how fast a StreamDiT streams, measured in one run.

For a subject (a named shape with random weights, or a checkpoint) and a partition it measures:

- **model calls**: for each variant of the fast path (window or full attention; eager or
  ``torch.compile``; with or without CUDA graphs; fp32, bf16 or fp8 matmuls), the first call
  (compile or capture included), then the median and spread of many calls after a warm-up,
  each timed between device synchronisations;
- **FLOPs per call**, counted by torch's FLOP counter on the eager model, and the achieved
  fraction of the device's matmul peak, measured in the same run for the variant's precision;
- **model-only video FPS** = video frames per call / seconds per call, with frames per call
  ``c * time_factor / s``;
- **decoding**: the subject's codec (our autoencoder, random weights at the subject's frame
  size) decoding one chunk seam-free, per chunk;
- **the stream end to end**: a :class:`~streamdit_core.runtime.Runtime` run of the fastest
  variant with its codec: video FPS over wall time, time to first frame from a cold buffer
  (warm start included), decode time per chunk, and peak memory (device memory on CUDA, the
  process's peak resident memory on a CPU).

Nothing here is estimated: every number in the report was timed or counted by this run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .accel import DTYPES, Accelerated, FastPath, accelerate, fp8_supported
from .codec import ChunkDecoder, CodecConfig, VideoAutoencoder
from .guidance import Guided
from .conditioning import TextEmbedding
from .model import PRESETS, StreamDiT, StreamDiTConfig
from .schedule import Partition, frame_sigma_table
from .velocity import CallCounter

__all__ = ["BENCH_PRESETS", "BenchPreset", "BenchReport", "DecoderResult", "Variant", "VariantResult",
           "StreamResult", "parse_variant", "default_variants", "measure_decoder", "run_bench", "format_report",
           "format_comparison"]


# --------------------------------------------------------------------------------------------
# What is measured
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchPreset:
    """A model shape with random weights, its codec and its streaming partition."""

    model: StreamDiTConfig
    codec: CodecConfig
    text_tokens: int  # text tokens per prompt (random token states)
    partition: Partition
    about: str
    fps: int = 16


BENCH_PRESETS: dict[str, BenchPreset] = {
    # The paper's real-time model: 512x512 at 16 fps from a 16-latent-frame buffer, c = 2 latent
    # frames (8 video frames) per call, N = 8, one step per chunk (the distilled student).
    # Codec: our autoencoder with the paper's 4x8x8 compression, 128 channels, random weights.
    "paper-4b": BenchPreset(PRESETS["paper-4b"],
                            CodecConfig(latent_channels=8, time_factor=4, space_factor=8, width=128),
                            256, Partition(K=0, N=8, c=2, s=1),
                            "paper-scale: 4.2B params, 512x512, 16 x 64 x 64 latents, 16,384 tokens per call"),
    # paper-4b scaled down for a CPU: the same buffer, partition and 4x8x8 codec at 128x128,
    # 1,024 tokens per call, windows that shift in time and space.
    "paper-mini": BenchPreset(StreamDiTConfig(in_channels=8, patch_size=2, hidden_size=384, depth=4, num_heads=6,
                                              text_dim=256, window=(4, 4, 4), buffer_frames=16,
                                              latent_size=(16, 16)),
                              CodecConfig(latent_channels=8, time_factor=4, space_factor=8, width=32),
                              32, Partition(K=0, N=8, c=2, s=1),
                              "paper-4b's layout scaled for a CPU: 128x128, 16 x 16 x 16 latents, 1,024 tokens"),
    # The tests' size: milliseconds per call.
    "tiny": BenchPreset(StreamDiTConfig(), CodecConfig(latent_channels=4, time_factor=1, space_factor=8, width=16),
                        8, Partition(K=0, N=8, c=2, s=1), "the tiny test model: 64x64, 256 tokens"),
}

ATTENTIONS = ("window", "full")
RUNS = ("eager", "compile", "eager+graphs", "compile+graphs")
PRECISIONS = ("fp32", "bf16", "fp16", "fp8")


@dataclass(frozen=True)
class Variant:
    """One row of the table: ``attention/run/precision``, e.g. ``window/compile+graphs/bf16``."""

    attention: str
    run: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.attention}/{self.run}/{self.precision}"

    def path(self, device: torch.device) -> FastPath:
        """The :class:`FastPath` of this row (fp8 keeps bf16 outside the matmuls on CUDA)."""
        dtype = self.precision
        if dtype == "fp8":
            dtype = "bf16" if device.type == "cuda" else "fp32"
        return FastPath(dtype=dtype, compile=self.run.startswith("compile"), cuda_graphs=self.run.endswith("graphs"),
                        fp8=self.precision == "fp8")

    def unavailable(self, device: torch.device) -> str | None:
        """Why this row cannot run on ``device``, or None."""
        if self.run.endswith("graphs") and device.type != "cuda":
            return "CUDA graphs need a CUDA device"
        if self.precision == "fp8":
            ok, why = fp8_supported(device)
            if not ok:
                return why
        return None


def parse_variant(text: str) -> Variant:
    """``"window/compile/bf16"`` -> :class:`Variant`, with an error naming the valid words."""
    parts = text.strip().split("/")
    if len(parts) != 3 or parts[0] not in ATTENTIONS or parts[1] not in RUNS or parts[2] not in PRECISIONS:
        raise ValueError(f"bad variant {text!r}: write ATTENTION/RUN/PRECISION with ATTENTION one of "
                         f"{', '.join(ATTENTIONS)}; RUN one of {', '.join(RUNS)}; PRECISION one of {', '.join(PRECISIONS)} "
                         "(e.g. window/compile+graphs/bf16)")
    return Variant(*parts)


def default_variants(device: torch.device) -> list[Variant]:
    """The full table for ``device``: every attention x run on CUDA in bf16 plus fp8 rows; on a
    CPU eager and compiled fp32, and eager bf16. Rows the device cannot run are reported, not hidden."""
    if device.type == "cuda":
        rows = [Variant(a, r, "bf16") for a, r in itertools.product(ATTENTIONS, RUNS)]
        return rows + [Variant(a, "compile+graphs", "fp8") for a in ATTENTIONS]
    rows = [Variant(a, r, "fp32") for a, r in itertools.product(ATTENTIONS, ("eager", "compile"))]
    return rows + [Variant("window", "eager", "bf16"), Variant("window", "eager", "fp8")]


@dataclass
class VariantResult:
    """One variant's model calls (times in ms)."""

    label: str
    skipped: str | None = None  # why it did not run
    first_call_ms: float = 0.0  # compile / CUDA-graph capture included
    call_ms: list[float] = field(default_factory=list)
    flops: float = 0.0  # per call, counted
    peak_flops: float = 0.0  # the device's measured matmul peak for this precision (FLOP/s)
    frames_per_call: float = 0.0
    peak_memory: int = 0  # bytes of device memory (CUDA only)
    max_abs_diff: float | None = None  # against the first variant's output on the same input

    @property
    def median_ms(self) -> float:
        return statistics.median(self.call_ms) if self.call_ms else 0.0

    @property
    def fps(self) -> float:
        """Video frames per second of model calls alone: frames per call / seconds per call."""
        return self.frames_per_call / (self.median_ms / 1000) if self.call_ms else 0.0

    @property
    def tflops(self) -> float:
        return self.flops / (self.median_ms / 1000) / 1e12 if self.call_ms else 0.0

    @property
    def peak_fraction(self) -> float:
        """Achieved FLOP/s over the measured matmul peak."""
        return self.tflops * 1e12 / self.peak_flops if self.call_ms and self.peak_flops else 0.0


@dataclass
class StreamResult:
    """The stream end to end with one variant and the codec."""

    variant: str
    frames: int = 0
    wall_s: float = 0.0
    first_frame_s: float = 0.0  # from a fresh buffer: warm start, first chunk, its decode
    warm_start_s: float = 0.0
    calls: int = 0  # model calls after the warm start, counted by the runtime
    branches: int = 0  # network evaluations in those calls (two per call under guidance)
    call_ms: float = 0.0  # median in the stream
    decode_ms: float = 0.0  # median per chunk in the stream
    decode_alone_ms: float = 0.0  # median per chunk decoded on its own (the decoder-cost line)
    frames_per_chunk: int = 0
    threaded: bool = False
    peak_memory: int = 0
    memory_kind: str = ""

    @property
    def fps(self) -> float:
        """Video frames out per second of wall time (decoding included)."""
        return self.frames / self.wall_s if self.wall_s else 0.0

    @property
    def calls_per_chunk(self) -> float:
        """Model calls per emitted chunk, as counted."""
        return self.calls * self.frames_per_chunk / self.frames if self.frames else 0.0


@dataclass
class BenchReport:
    subject: str
    about: str
    device: str
    torch: str
    partition: Partition
    frame_size: tuple[int, int]
    frames_per_call: float
    tokens_per_call: int
    parameters: int
    guidance: float
    calls_timed: int
    variants: list[VariantResult]
    stream: StreamResult | None
    matmul_peaks: dict[str, float]  # precision -> FLOP/s, measured

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["partition"] = dataclasses.asdict(self.partition)
        for row, result in zip(data["variants"], self.variants):
            row.update(median_ms=result.median_ms, fps=result.fps, tflops=result.tflops,
                       peak_fraction=result.peak_fraction)
        if self.stream is not None:
            data["stream"]["fps"] = self.stream.fps
        return json.dumps(data, indent=2)


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------

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
    from .checkpoint import load_checkpoint
    from .pipeline import Pipeline

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
                   threaded: bool | None) -> StreamResult:
    """A fresh stream through the runtime: warm start, ``frames`` video frames, decoded."""
    from .pipeline import Pipeline
    from .runtime import Runtime
    from .session import Session

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
    runtime = Runtime(session, threaded=threaded)
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
    if device.type == "cuda":
        result.peak_memory, result.memory_kind = torch.cuda.max_memory_allocated(device), "CUDA allocated"
    else:
        result.peak_memory, result.memory_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process RSS"
    return result


@dataclass
class DecoderResult:
    """The codec alone: seam-free decoding of one chunk after another."""

    frame_size: tuple[int, int]
    frames_per_chunk: int
    decode_ms: list[float]
    flops: float  # per chunk, counted

    @property
    def median_ms(self) -> float:
        return statistics.median(self.decode_ms)

    @property
    def fps(self) -> float:
        """Video frames per second the decoder alone can deliver."""
        return self.frames_per_chunk / (self.median_ms / 1000)


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


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------

def format_report(report: BenchReport) -> str:
    """The report as text: a header, the variants table, the stream and decoder lines."""
    H, W = report.frame_size
    P = report.partition
    lines = [
        f"subject {report.subject}: {report.about}",
        f"device {report.device}, torch {report.torch}",
        f"{H}x{W} video, partition K={P.K} N={P.N} c={P.c} s={P.s}, {report.frames_per_call:g} video frames per call, "
        f"{report.tokens_per_call} tokens per call, {report.parameters / 1e6:.1f}M parameters"
        + (f", guidance {report.guidance:g} (two branches per call)" if report.guidance != 1 else ""),
        "matmul peak (measured): " + ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in report.matmul_peaks.items()),
        "",
        f"| variant | first call ms | median ms/call ({report.calls_timed} calls) | p10-p90 ms | model-only video FPS "
        "| GFLOP/call | TFLOP/s | of peak | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.variants:
        if r.skipped:
            lines.append(f"| {r.label} | n/a: {r.skipped} | | | | | | | |")
            continue
        q = statistics.quantiles(r.call_ms, n=10) if len(r.call_ms) > 1 else [r.median_ms] * 9
        diff = "" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}"
        lines.append(f"| {r.label} | {r.first_call_ms:.0f} | {r.median_ms:.2f} | {q[0]:.2f}-{q[-1]:.2f} | {r.fps:.1f} "
                     f"| {r.flops / 1e9:.3g} | {r.tflops:.3g} | {100 * r.peak_fraction:.1f}% | {diff} |")
    s = report.stream
    if s is not None:
        serial = s.frames_per_chunk / ((P.s * s.call_ms + s.decode_ms) / 1000) if s.call_ms else 0.0
        lines += [
            "",
            f"stream with {s.variant} ({'threaded' if s.threaded else 'inline'} runtime): {s.frames} frames in "
            f"{s.wall_s:.2f} s = {s.fps:.1f} video FPS with decoding; time to first frame {s.first_frame_s:.3f} s "
            f"(warm start {s.warm_start_s:.3f} s); {s.calls} calls ({s.calls_per_chunk:g} per chunk, "
            f"{s.branches} network evaluations), median {s.call_ms:.2f} ms per call",
            f"decoder: {s.decode_alone_ms:.2f} ms per chunk of {s.frames_per_chunk} frames alone, {s.decode_ms:.2f} ms "
            f"in the stream; calls then decode one after the other would give {serial:.1f} FPS",
            f"peak memory ({s.memory_kind}): {s.peak_memory / 2**20:.0f} MiB",
        ]
    return "\n".join(lines)


def format_comparison(reports: Sequence[BenchReport]) -> str:
    """One line per subject: counted calls per chunk, model-only and end-to-end FPS, first frame."""
    lines = ["| subject | partition | calls per chunk (branches) | model-only video FPS | stream FPS with decoding "
             "| time to first frame s |", "|---|---|---|---|---|---|"]
    for r in reports:
        best = min((v for v in r.variants if not v.skipped), key=lambda v: v.median_ms, default=None)
        s, P = r.stream, r.partition
        chunk = f"{s.calls_per_chunk:g} ({s.branches * s.frames_per_chunk / s.frames:g})" if s and s.frames else ""
        lines.append(f"| {r.subject} | K={P.K} N={P.N} c={P.c} s={P.s} | {chunk} | {best.fps if best else 0:.1f} "
                     f"| {s.fps if s else 0:.1f} | {s.first_frame_s if s else 0:.3f} |")
    return "\n".join(lines)


def main(args) -> int:
    """The ``bench`` subcommand (arguments from :mod:`streamdit_core.cli`)."""
    from .pipeline import resolve_device

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        variants = [parse_variant(v) for v in args.variants.split(",")] if args.variants else default_variants(device)
        partition = Partition(*args.partition) if args.partition else None
        if args.model:
            subjects = [checkpoint_subject(m, device, partition, args.guidance) for m in args.model]
        else:
            subjects = [preset_subject(args.preset, device, partition)]
            if args.guidance is not None:
                subjects[0].guidance = args.guidance
        reports = []
        for subject in subjects:
            if args.decoder_only:
                _print_decoder(subject, device, args.calls)
                continue
            reports.append(run_bench(subject, device, variants, calls=args.calls, warmup=args.warmup,
                                     stream_frames=args.stream_frames, threaded=args.threaded,
                                     log=lambda line: print(line, file=sys.stderr, flush=True)))
    except ValueError as err:
        raise SystemExit(f"bench: {err}") from None
    print("\n\n".join(format_report(r) for r in reports))
    if len(reports) > 1:
        print("\n" + format_comparison(reports))
    if args.json and reports:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(reports[0].to_json() if len(reports) == 1 else
                             "[" + ",\n".join(r.to_json() for r in reports) + "]")
    return 0


def _print_decoder(subject: Subject, device: torch.device, chunks: int) -> None:
    d = measure_decoder(subject, device, chunks)
    H, W = d.frame_size
    q = statistics.quantiles(d.decode_ms, n=10) if len(d.decode_ms) > 1 else [d.median_ms] * 9
    print(f"decoder of {subject.name} on {device}: {H}x{W}, {d.frames_per_chunk} frames per chunk, "
          f"median {d.median_ms:.1f} ms per chunk (p10-p90 {q[0]:.1f}-{q[-1]:.1f}, {len(d.decode_ms)} chunks), "
          f"{d.flops / 1e9:.1f} GFLOP per chunk, {d.fps:.1f} video frames/s for the decoder alone")
