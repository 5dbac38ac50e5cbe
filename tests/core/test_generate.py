"""`python -m streamdit_core generate` on the embedded model writes a playable video."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamdit_core.checkpoint import read_metadata
from streamdit_core.pipeline import DEFAULT_MODEL, EMBEDDED_TEACHER, model_path
from streamdit_core.video import read_video

ROOT = Path(__file__).resolve().parents[2]


def _generate(*args, check=True):
    return subprocess.run([sys.executable, "-m", "streamdit_core", "generate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def test_the_embedded_models_ship_with_the_package_and_the_default_is_the_distilled_student():
    for path in (DEFAULT_MODEL, EMBEDDED_TEACHER):
        assert path.is_file() and path.stat().st_size <= 25 * 2**20
    assert (DEFAULT_MODEL.parent / "codec.safetensors").is_file()
    student, teacher = read_metadata(DEFAULT_MODEL), read_metadata(EMBEDDED_TEACHER)
    assert student["steps_per_chunk"] == "1" and student["guidance"] == "1"  # one unguided call per chunk
    assert student["teacher"] == EMBEDDED_TEACHER.name and "steps_per_chunk" not in teacher
    assert float(teacher["guidance"]) > 1 and student["codec"] == teacher["codec"] == "codec.safetensors"
    assert model_path(None) == model_path("embedded") == DEFAULT_MODEL
    assert model_path("embedded-teacher") == EMBEDDED_TEACHER and model_path("x.safetensors").name == "x.safetensors"


@pytest.mark.parametrize("suffix", [".mp4", ".gif", "/"])
def test_generate_writes_the_requested_frames(tmp_path, suffix):
    out = str(tmp_path / "clip") + suffix
    run = _generate("--prompt", "a red circle moving left on a black background", "--seconds", "1.25",
                    "--switch", "0.5", "a red circle moving right on a black background", "--out", out)
    assert run.returncode == 0, run.stderr[-2000:]
    video = read_video(out)
    assert video.shape == (20, 3, 64, 64)  # 1.25 s at 16 fps
    assert "time to first frame" in run.stdout and "frames/s" in run.stdout


def test_a_seed_gives_the_same_video_run_after_run(tmp_path):
    videos = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        out = tmp_path / f"{name}.mp4"
        run = _generate("--prompt", "a red circle moving left on a black background", "--seconds", "2", "--seed", seed,
                        "--switch", "1", "a blue square moving up on a white background", "--out", str(out))
        assert run.returncode == 0, run.stderr[-2000:]
        videos.append(read_video(out))
    assert torch.equal(videos[0], videos[1])  # bit-identical decoded frames, the switch included
    assert not torch.equal(videos[0], videos[2])


def test_generate_rejects_bad_input_with_a_clear_message(tmp_path):
    run = _generate("--prompt", "x", "--seconds", "1", "--out", str(tmp_path / "a.avi"))
    assert run.returncode != 0 and ".avi" in run.stderr
    run = _generate("--prompt", "x", "--seconds", "1", "--switch", "3", "y", "--out", str(tmp_path / "a.mp4"))
    assert run.returncode != 0 and "inside the video" in run.stderr
    run = _generate("--prompt", "x", "--model", "nosuch.safetensors", "--out", str(tmp_path / "a.mp4"))
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "nosuch.safetensors: no such model file" in run.stderr and "'embedded-teacher'" in run.stderr
    run = _generate("--prompt", "x", "--chunk", "5", "--out", str(tmp_path / "a.mp4"))  # divides neither 8 nor 8 - K
    assert run.returncode != 0 and "bad partition" in run.stderr


def test_generate_switches_per_chunk_on_request(tmp_path):
    from streamdit_core.world import detect

    out = tmp_path / "cut.gif"
    run = _generate("--prompt", "a red circle moving right on a black background", "--seconds", "2",
                    "--switch", "1", "a blue circle moving right on a black background", "--switch-mode", "chunk",
                    "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    assert detect(read_video(out)).color == ["red"] * 16 + ["blue"] * 16


def test_a_run_stopped_by_sigterm_keeps_every_frame_it_wrote(tmp_path):
    """SIGTERM (what timeout or a service manager sends) mid-run: the video is finalized, one
    line says what was written, and every frame written up to then plays back."""
    import re
    import signal
    import time

    out = tmp_path / "long.mp4"
    partial = tmp_path / "long.partial.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "streamdit_core", "generate", "--prompt",
                             "a red circle moving left on a black background", "--seconds", "600", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not partial.exists() or partial.stat().st_size < 20_000):
            time.sleep(0.2)  # a few seconds of video on disk, playable while it is written
        assert partial.exists(), "no frames reached the disk"
        assert read_video(partial).shape[0] >= 16  # the file plays before it is finished
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]
    said = re.search(r"stopped by SIGTERM; wrote (\d+) frames", err)
    assert said, err[-2000:]
    assert read_video(out).shape[0] == int(said.group(1)) >= 16 and not partial.exists()


def test_bad_arguments_are_refused_before_the_model_loads(tmp_path):
    out = str(tmp_path / "a.mp4")
    for seconds in ("inf", "nan", "-1"):
        run = _generate("--prompt", "x", "--seconds", seconds, "--out", out)
        assert run.returncode == 2 and "positive, finite" in run.stderr and "Traceback" not in run.stderr
    run = _generate("--prompt", "x", "--guidance", "nan", "--out", out)
    assert run.returncode != 0 and "--guidance must be a finite number" in run.stderr
    run = _generate("--prompt", "x", "--switch", "soon", "y", "--out", out)
    assert run.returncode != 0 and "write seconds of video, e.g. 4 or 4.5s" in run.stderr
    run = _generate("--prompt", "x", "--guided-calls", "-1", "--out", out)
    assert run.returncode == 2 and "whole number >= 0" in run.stderr and "Traceback" not in run.stderr
    import torch

    if not torch.cuda.is_available():
        run = _generate("--prompt", "x", "--device", "cuda", "--out", out)
        assert run.returncode == 2 and "Traceback" not in run.stderr and "--device cpu" in run.stderr


def test_switch_times_take_the_schedule_notation_and_unknown_words_are_named(tmp_path):
    out = tmp_path / "s.gif"
    run = _generate("--prompt", "a red dragon flying over a castle", "--seconds", "1", "--switch", "0.5s",
                    "a red circle moving right on a black background", "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    assert read_video(out).shape[0] == 16
    assert "never saw the words 'dragon', 'flying', 'over', 'castle'" in run.stderr
    assert "'circle'" not in run.stderr  # the second prompt is all known words


def test_a_prompt_longer_than_the_encoder_keeps_is_cut_with_a_warning(caplog):
    from streamdit_core.text import TextEncoder

    encoder = TextEncoder(max_length=8)
    with caplog.at_level("WARNING", logger="streamdit_core.text"):
        encoder.encode("a red circle moving left on a black background " * 20)
        encoder.encode("a red circle")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "keeps the first 8" in warnings[0] and "is cut to 'a red circle" in warnings[0]
