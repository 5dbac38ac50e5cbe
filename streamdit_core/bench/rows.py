"""What the benchmark measures: the shapes it benches, the rows of its table, and its results."""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
from dataclasses import dataclass, field

import torch

from ..accel import FastPath, fp8_supported
from ..codec import CodecConfig
from ..model import PRESETS, StreamDiTConfig
from ..schedule import Partition

__all__ = ["ATTENTIONS", "BENCH_PRESETS", "BenchPreset", "BenchReport", "DecoderResult", "PRECISIONS", "RUNS",
           "StreamResult", "Variant", "VariantResult", "default_variants", "parse_variant"]

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
    threads: int | None = None  # CPU threads the stream ran with (the runtime's thread policy)

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
