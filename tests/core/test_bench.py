"""The bench command on a CPU: its numbers are measured, counted and consistent with each other."""

from __future__ import annotations

import json

import pytest
import torch

from streamdit_core import Partition
from streamdit_core.bench import (BENCH_PRESETS, checkpoint_subject, count_flops, default_variants, parse_variant,
                                  preset_subject, run_bench)
from streamdit_core.cli import main

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_report():
    subject = preset_subject("tiny", CPU)
    variants = [parse_variant(v) for v in ("window/eager/fp32", "full/eager/fp32", "window/eager/bf16",
                                           "window/eager/fp8", "window/compile+graphs/fp32")]
    return run_bench(subject, CPU, variants, calls=5, warmup=1, stream_frames=16)


def test_model_only_fps_is_frames_per_call_over_seconds_per_call(tiny_report):
    P = tiny_report.partition
    assert tiny_report.frames_per_call == P.c * 1 / P.s == 2  # the tiny codec has one frame per latent
    ran = [r for r in tiny_report.variants if not r.skipped]
    assert [r.label for r in ran] == ["window/eager/fp32", "full/eager/fp32", "window/eager/bf16"]
    for r in ran:
        assert len(r.call_ms) == 5 and all(ms > 0 for ms in r.call_ms)
        assert r.fps == pytest.approx(r.frames_per_call / (r.median_ms / 1000), rel=1e-12)
        assert r.peak_fraction == pytest.approx(r.flops / (r.median_ms / 1000) / r.peak_flops, rel=1e-9)
        assert r.peak_flops == tiny_report.matmul_peaks[r.label.split("/")[-1]] > 0


def test_flops_are_counted_and_full_attention_costs_more_than_windows(tiny_report):
    window, full, bf16 = (r for r in tiny_report.variants if not r.skipped)
    assert window.flops == bf16.flops > 0
    assert full.flops > window.flops  # 256 tokens attend to 256 instead of to their 64-token window
    subject = preset_subject("tiny", CPU)
    model = subject.build_model(subject.config, CPU)
    x = torch.randn(1, 4, 16, 8, 8)
    assert count_flops(model, x, torch.rand(1, 16), subject.text.encode("p")) == window.flops
    assert window.max_abs_diff is None and bf16.max_abs_diff > 0  # bf16 against the fp32 output


def test_rows_the_device_cannot_run_are_reported_with_the_reason(tiny_report):
    skipped = {r.label: r.skipped for r in tiny_report.variants if r.skipped}
    assert skipped == {"window/eager/fp8": "cpu has no fp8 matmul units",
                       "window/compile+graphs/fp32": "CUDA graphs need a CUDA device"}
    labels = [v.label for v in default_variants(CPU)]
    assert labels[:4] == ["window/eager/fp32", "window/compile/fp32", "full/eager/fp32", "full/compile/fp32"]


def test_the_stream_line_is_consistent(tiny_report):
    s = tiny_report.stream
    assert s.variant == "window/eager/fp32" or s.variant in {r.label for r in tiny_report.variants}
    assert s.frames == 16 and s.frames_per_chunk == 2
    assert s.calls == 8  # one call per chunk of 2 frames (s = 1)
    assert s.fps == pytest.approx(s.frames / s.wall_s)
    assert 0 < s.warm_start_s <= s.first_frame_s
    assert s.decode_alone_ms > 0 and s.decode_ms > 0 and s.peak_memory > 0
    assert tiny_report.frame_size == (64, 64)


def test_guidance_doubles_the_counted_flops_of_a_checkpoint():
    reports = [run_bench(checkpoint_subject("embedded", CPU, Partition(0, 4, 2, 1), guidance=g), CPU,
                         [parse_variant("window/eager/fp32")], calls=2, warmup=0, stream_frames=0)
               for g in (1.0, 5.0)]
    plain, guided = (r.variants[0] for r in reports)
    assert guided.flops == 2 * plain.flops
    assert reports[0].stream is None and reports[0].frame_size == (64, 64)


def test_bad_variants_and_partitions_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="RUN one of eager, compile"):
        parse_variant("window/fast/fp32")
    subject = preset_subject("tiny", CPU, Partition(0, 4, 2, 1))
    with pytest.raises(ValueError, match="choose K \\+ N\\*c = 16"):
        run_bench(subject, CPU, [parse_variant("window/eager/fp32")], calls=1)
    with pytest.raises(ValueError, match="unknown bench preset"):
        preset_subject("huge", CPU)
    with pytest.raises(SystemExit, match="bad variant"):
        main(["bench", "--preset", "tiny", "--variants", "window/eager/int4"])


def test_the_command_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--variants", "window/eager/fp32", "--calls", "3",
                 "--stream-frames", "8", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| window/eager/fp32 |" in text and "video FPS with decoding" in text
    data = json.loads(out.read_text())
    row = data["variants"][0]
    assert row["fps"] == pytest.approx(data["frames_per_call"] * 1000 / row["median_ms"])
    assert data["stream"]["frames"] == 8
    assert set(BENCH_PRESETS) >= {"paper-4b", "paper-mini", "tiny"}


def test_the_decoder_line_times_chunks_in_a_row(capsys):
    from streamdit_core.bench import measure_decoder

    d = measure_decoder(preset_subject("tiny", CPU), CPU, chunks=4)
    assert len(d.decode_ms) == 4 and d.flops > 0
    assert d.frames_per_chunk == 2 and d.frame_size == (64, 64)
    assert d.fps == pytest.approx(2 / (d.median_ms / 1000))
    assert main(["bench", "--preset", "tiny", "--decoder-only", "--calls", "3"]) == 0
    assert "64x64, 2 frames per chunk" in capsys.readouterr().out
