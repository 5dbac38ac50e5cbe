"""The benchmark's report as text: the variants table, the stream and decoder lines, comparisons."""

from __future__ import annotations

import statistics
from typing import Sequence

from .rows import BenchReport, DecoderResult

__all__ = ["format_comparison", "format_contention", "format_decoder", "format_report"]


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


def format_decoder(name: str, device, d: DecoderResult) -> str:
    """The decoder-cost line of ``bench --decoder-only``."""
    H, W = d.frame_size
    q = statistics.quantiles(d.decode_ms, n=10) if len(d.decode_ms) > 1 else [d.median_ms] * 9
    return (f"decoder of {name} on {device}: {H}x{W}, {d.frames_per_chunk} frames per chunk, "
            f"median {d.median_ms:.1f} ms per chunk (p10-p90 {q[0]:.1f}-{q[-1]:.1f}, {len(d.decode_ms)} chunks), "
            f"{d.flops / 1e9:.1f} GFLOP per chunk, {d.fps:.1f} video frames/s for the decoder alone")


def format_contention(rows) -> str:
    """The thread-policy table of ``bench --contention``: video FPS with decoding, quiet and beside
    a competing 2-thread job (medians, with every run's figure)."""
    lines = ["| CPU thread policy | quiet FPS | contended FPS | quiet / contended | threads at the end (contended) |",
             "|---|---|---|---|---|"]
    for r in rows:
        quiet = ", ".join(f"{v:.1f}" for v in r.quiet_fps)
        busy = ", ".join(f"{v:.1f}" for v in r.contended_fps)
        lines.append(f"| {r.policy} | {statistics.median(r.quiet_fps):.1f} ({quiet}) | "
                     f"{statistics.median(r.contended_fps):.1f} ({busy}) | {r.slowdown:.2f}x | "
                     f"{', '.join(str(t) for t in r.threads_used)} |")
    return "\n".join(lines)
