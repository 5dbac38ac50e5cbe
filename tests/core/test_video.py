"""Streaming video writers: every format reads back frame-exact in count, close in color."""

import sys
from fractions import Fraction

import pytest
import torch

av = pytest.importorskip("av")

from streamdit_core import video as video_module  # noqa: E402
from streamdit_core.video import SUPPORTED, VideoWriter, open_writer, read_video  # noqa: E402

FORMATS = ["clip.mp4", "clip.webm", "clip.gif", "frames/"]
# Largest per-pixel error allowed inside flat color regions (away from edges, where lossy
# codecs smear chroma); PNG is lossless and GIF keeps flat colors exactly.
TOLERANCE = {"clip.mp4": 0.1, "clip.webm": 0.1, "clip.gif": 1 / 255, "frames/": 1 / 255}
RED, BLUE, WHITE = torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, 1.0]), torch.tensor([1.0, 1, 1])


def halves(t: int, h: int = 64, w: int = 64) -> torch.Tensor:
    """[t, 3, h, w]: left half red, right half blue."""
    x = torch.zeros(t, 3, h, w)
    x[:, :, :, : w // 2] = RED[:, None, None]
    x[:, :, :, w // 2 :] = BLUE[:, None, None]
    return x


def with_square(x: torch.Tensor, start: int = 0, size: int = 8) -> torch.Tensor:
    """Put a white square on each frame, moving 2 px right per frame along the top rows."""
    x = x.clone()
    for i in range(x.shape[0]):
        col = 2 * (start + i)
        x[i, :, 2 : 2 + size, col : col + size] = 1.0
    return x


def square_column(frame: torch.Tensor) -> float:
    """Mean column of the white pixels in rows 2..9 (the square's rows) of a [3, H, W] frame."""
    white = (frame[:, 2:10].min(dim=0).values > 0.7).float()  # white: every channel high
    cols = torch.arange(frame.shape[-1], dtype=torch.float32)
    return float((white.sum(0) * cols).sum() / white.sum())


def target(tmp_path, name):
    # A trailing "/" marks a PNG folder; pathlib would drop it, so pass a str.
    return str(tmp_path / name) + ("/" if name.endswith("/") else "")


@pytest.mark.parametrize("name", FORMATS)
def test_two_writes_read_back_with_exact_count_size_order_and_colors(tmp_path, name):
    frames = with_square(halves(20))
    path = target(tmp_path, name)
    with VideoWriter(path, fps=8) as writer:
        writer.write(frames[:12])
        writer.write(frames[12:])
        assert writer.frames_written == 20
    out = read_video(writer.path)
    assert out.shape == (20, 3, 64, 64) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    tol = TOLERANCE[name]
    # Flat regions below the square's rows, away from the red/blue edge.
    for region, color in ((out[:, :, 16:, 4:28], RED), (out[:, :, 16:, 36:60], BLUE)):
        err = (region - color[None, :, None, None]).abs().max()
        assert err <= tol + 1e-6, f"{name}: color error {err:.3f}"
    # The square moves 2 px a frame: frames are in order, none dropped or repeated.
    for i in range(20):
        assert square_column(out[i]) == pytest.approx(2 * i + 3.5, abs=0.75), f"{name} frame {i}"
    leftovers = [p.name for p in tmp_path.rglob("*") if ".partial" in p.name]
    assert leftovers == []


@pytest.mark.parametrize("name", FORMATS)
def test_identical_frames_are_all_kept(tmp_path, name):
    path = target(tmp_path, name)
    with open_writer(path, fps=30) as writer:
        for _ in range(3):
            writer.write(halves(3))
    assert read_video(writer.path).shape[0] == 9


@pytest.mark.parametrize("name", FORMATS)
def test_an_exception_in_the_block_keeps_the_frames_written_before_it(tmp_path, name):
    path = target(tmp_path, name)
    with pytest.raises(KeyError, match="boom"):
        with VideoWriter(path, fps=8) as writer:
            writer.write(halves(5))
            writer.write(halves(2))
            raise KeyError("boom")
    assert writer.frames_written == 7
    out = read_video(writer.path)
    assert out.shape == (7, 3, 64, 64)
    assert (out[:, :, 16:, 4:28] - RED[None, :, None, None]).abs().max() <= TOLERANCE[name] + 1e-6
    assert [p.name for p in tmp_path.rglob("*") if ".partial" in p.name] == []


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm", "clip.gif"])
def test_file_is_written_under_a_partial_name_until_close(tmp_path, name):
    writer = VideoWriter(tmp_path / "sub" / "dir" / name, fps=8)  # parents are created
    writer.write(halves(40))  # past the encoders' look-ahead, so packets reach the file
    stem, ext = name.split(".")
    assert not writer.path.exists()
    assert (tmp_path / "sub" / "dir" / f"{stem}.partial.{ext}").exists()
    assert writer.close() == writer.path
    assert writer.close() == writer.path  # idempotent
    assert writer.path.exists()
    assert not (tmp_path / "sub" / "dir" / f"{stem}.partial.{ext}").exists()
    assert read_video(writer.path).shape == (40, 3, 64, 64)
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(halves(1))


def test_png_folder_numbering_continues_across_writes_and_is_lossless(tmp_path):
    frames = torch.rand(5, 3, 6, 10)
    (tmp_path / "pngs").mkdir()
    with VideoWriter(tmp_path / "pngs", fps=8) as w1:  # an existing directory is a PNG folder too
        pass
    assert w1.frames_written == 0
    with VideoWriter(str(tmp_path / "pngs") + "/", fps=8) as writer:
        writer.write(frames[:2])
        writer.write(frames[2:])
    names = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert names == [f"{i:06d}.png" for i in range(5)]
    assert (read_video(tmp_path / "pngs") - frames).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(FileExistsError, match="already holds numbered frames"):
        VideoWriter(tmp_path / "pngs", fps=8)


def test_values_are_clamped_and_any_float_dtype_is_accepted(tmp_path):
    frames = halves(2)
    frames[:, 0, :, : 32] = 3.0  # red over 1 -> 1
    frames[:, 2, :, 32:] = 2.0
    frames[:, 1] = -1.0  # green below 0 -> 0
    with VideoWriter(str(tmp_path / "f") + "/", fps=8) as w:
        w.write(frames.to(torch.bfloat16).requires_grad_())
    assert torch.equal(read_video(w.path), halves(2))


def test_unsupported_extension_names_it_and_lists_the_supported(tmp_path):
    with pytest.raises(ValueError) as info:
        VideoWriter(tmp_path / "clip.avi", fps=8)
    message = str(info.value)
    assert "'.avi'" in message
    assert all(ext in message for ext in SUPPORTED) and "folder" in message
    assert not (tmp_path / "clip.avi").exists()


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm"])
def test_odd_size_is_refused_for_yuv420p_formats(tmp_path, name):
    with VideoWriter(tmp_path / name, fps=8) as writer:
        with pytest.raises(ValueError, match=r"65x64.*even"):
            writer.write(torch.rand(2, 3, 65, 64))
        with pytest.raises(ValueError, match=r"64x63.*even"):
            writer.write(torch.rand(2, 3, 64, 63))
    assert writer.frames_written == 0 and not writer.path.exists()


def test_odd_size_is_fine_for_gif(tmp_path):
    with VideoWriter(tmp_path / "odd.gif", fps=8) as writer:
        writer.write(halves(3, h=17, w=33))
    assert read_video(writer.path).shape == (3, 3, 17, 33)


@pytest.mark.parametrize("name", FORMATS)
def test_size_change_between_writes_names_both_sizes(tmp_path, name):
    with VideoWriter(target(tmp_path, name), fps=8) as writer:
        writer.write(halves(3))
        with pytest.raises(ValueError, match=r"64x64.*32x48"):
            writer.write(halves(2, h=32, w=48))
    assert read_video(writer.path).shape == (3, 3, 64, 64)


def test_bad_shapes_and_dtypes_report_what_they_got(tmp_path):
    with VideoWriter(tmp_path / "clip.mp4", fps=8) as writer:
        with pytest.raises(ValueError, match=r"\(3, 64, 64\)"):
            writer.write(torch.rand(3, 64, 64))
        with pytest.raises(ValueError, match=r"\(2, 4, 64, 64\)"):
            writer.write(torch.rand(2, 4, 64, 64))
        with pytest.raises(ValueError, match="uint8"):
            writer.write(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
        writer.write(torch.rand(0, 3, 64, 64))  # nothing to write
    assert writer.frames_written == 0 and not writer.path.exists()
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "clip.mp4", fps=0)


@pytest.mark.parametrize("fps", [30, 12.5, 29.97])
def test_fractional_rates_are_kept(tmp_path, fps):
    with VideoWriter(tmp_path / "clip.mp4", fps=fps) as writer:
        writer.write(halves(4))
    assert writer.fps == Fraction(str(fps))
    with av.open(str(writer.path)) as container:
        assert container.streams.video[0].average_rate == writer.fps


@pytest.mark.parametrize(("ext", "fallback", "decoded_as"), [(".mp4", "mpeg4", "mpeg4"), (".webm", "libvpx", "vp8")])
def test_fallback_encoders_write_readable_video(tmp_path, monkeypatch, ext, fallback, decoded_as):
    try:
        av.codec.Codec(fallback, "w")
    except Exception:
        pytest.skip(f"this av build has no {fallback} encoder")
    monkeypatch.setitem(video_module._ENCODERS, ext, ("no-such-encoder", fallback))
    with VideoWriter(tmp_path / f"clip{ext}", fps=8) as writer:
        writer.write(halves(6))
    with av.open(str(writer.path)) as container:
        assert container.streams.video[0].codec_context.name == decoded_as
    out = read_video(writer.path)
    assert out.shape == (6, 3, 64, 64)
    assert (out[:, :, 16:, 4:28] - RED[None, :, None, None]).abs().max() <= 0.1


def test_read_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no frames"):
        read_video(tmp_path / "empty")


def test_module_imports_without_av(monkeypatch):
    import importlib.util

    monkeypatch.setitem(sys.modules, "av", None)  # any `import av` now fails
    spec = importlib.util.spec_from_file_location("video_without_av", video_module.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.SUPPORTED == SUPPORTED
    with pytest.raises(ImportError):
        module.read_video(__file__)


def test_an_mp4_being_written_plays_up_to_its_last_second(tmp_path):
    """The file on disk is playable while it is written (a fragment per second of video), so a
    process killed mid-stream leaves a video of what it wrote."""
    writer = VideoWriter(tmp_path / "live.mp4", fps=8)
    frames = torch.rand(1, 3, 16, 16).expand(8, -1, -1, -1)
    for second in range(3):
        writer.write(frames * (second + 1) / 3)
    snapshot = tmp_path / "copy.mp4"
    snapshot.write_bytes(writer.partial_path.read_bytes())  # what a kill would leave now
    assert read_video(snapshot).shape[0] >= 16  # every complete second is on disk
    writer.close()
    assert read_video(tmp_path / "live.mp4").shape[0] == 24


def test_an_interrupt_during_a_frame_lands_after_it_so_the_count_matches_the_file(tmp_path):
    """Ctrl-C arriving while a frame is encoded is held until the frame is written and counted."""
    import os
    import signal

    from streamdit_core.video import _whole_frame, open_writer, read_video

    writer = open_writer(tmp_path / "a.mp4", 16)
    frames = torch.rand(4, 3, 16, 16)
    with pytest.raises(KeyboardInterrupt):
        with writer:
            writer.write(frames[:2])
            with _whole_frame():
                os.kill(os.getpid(), signal.SIGINT)  # held: nothing is raised inside
                writer.write(frames[2:3])
            writer.write(frames[3:])  # never reached
    assert writer.frames_written == 3 == read_video(tmp_path / "a.mp4").shape[0]
