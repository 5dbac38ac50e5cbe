"""How fast a StreamDiT streams, measured in one run (``python -m streamdit_core bench``).

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

The package: ``rows`` (the shapes benched, the table's rows, the results), ``measure`` (the
measurements), ``report`` (the text report); the command line is in :mod:`streamdit_core.cli`.
"""

from .measure import (ContentionRow, RandomText, Subject, checkpoint_subject, count_flops, matmul_peak, measure_decoder,
                      measure_contention, measure_stream, measure_variant, preset_subject, run_bench)
from .report import format_comparison, format_contention, format_decoder, format_report
from .rows import (BENCH_PRESETS, BenchPreset, BenchReport, DecoderResult, StreamResult, Variant, VariantResult,
                   default_variants, parse_variant)

__all__ = ["ContentionRow", "format_contention", "measure_contention", "BENCH_PRESETS", "BenchPreset", "BenchReport", "DecoderResult", "RandomText", "StreamResult", "Subject",
           "Variant", "VariantResult", "checkpoint_subject", "count_flops", "default_variants", "format_comparison",
           "format_decoder", "format_report", "matmul_peak", "measure_decoder", "measure_stream", "measure_variant",
           "parse_variant", "preset_subject", "run_bench"]
