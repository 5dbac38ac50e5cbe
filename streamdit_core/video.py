"""Streaming video writers: frames go to disk as they arrive, so memory stays flat.

Frames are ``[T, 3, H, W]`` float tensors in 0..1 (any device). Formats, chosen by the path:
``.mp4`` (H.264, or MPEG-4 Part 2 where the PyAV build lacks libx264), ``.webm`` (VP9, or VP8),
``.gif``, and a folder of numbered PNGs (a path ending in ``/`` or an existing directory).
PyAV is imported only when a video file is opened, so importing this module needs no ``av``.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

SUPPORTED = (".mp4", ".webm", ".gif")
"""File extensions :class:`VideoWriter` writes; a folder path writes numbered PNGs instead."""

_FOLDER = "folder of PNGs (a path ending in '/' or an existing directory)"

# Encoders to try per extension, best first. ``quality`` is the CRF (constant quality; lower
# is better) for x264 and libvpx, the fixed quantizer for mpeg4; unused for GIF.
_ENCODERS: dict[str, tuple[str, ...]] = {
    ".mp4": ("libx264", "mpeg4"),
    ".webm": ("libvpx-vp9", "libvpx"),
    ".gif": ("gif",),
}
_CONTAINER_FORMAT = {".mp4": "mp4", ".webm": "webm", ".gif": "gif"}
# Container options that keep a file playable up to its last second while it is written: MP4 is
# fragmented (a moof/mdat pair per keyframe, an empty moov up front) and every muxed packet
# is flushed to disk, so a process killed mid-stream leaves a video of what it wrote.
_CONTAINER_OPTIONS = {
    ".mp4": {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"},
    ".webm": {"flush_packets": "1"},
    ".gif": {"flush_packets": "1"},
}
_DEFAULT_QUALITY = {"libx264": 18, "mpeg4": 3, "libvpx-vp9": 30, "libvpx": 10}
_FRAME_NAME = re.compile(r"^\d{6}\.png$")


def _first_encoder(names: tuple[str, ...]) -> str:
    """Return the first of ``names`` the installed PyAV build can encode with.

    Args:
        names: Encoder names, best first.

    Returns:
        The first available name.

    Raises:
        RuntimeError: If none is available.
    """
    import av

    for name in names:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # av raises UnknownCodecError (a ValueError) or FFmpegError
            continue
        return name
    raise RuntimeError(f"this PyAV build has none of the encoders {', '.join(names)}")


def _to_rgb24(frames: torch.Tensor) -> Any:
    """Convert frames to uint8 RGB on the CPU.

    Args:
        frames: ``[T, 3, H, W]`` floating-point tensor, values in 0..1 (clamped; NaN -> 0).

    Returns:
        A numpy ``uint8`` array ``[T, H, W, 3]``.
    """
    x = torch.nan_to_num(frames.detach().float(), nan=0.0).clamp_(0.0, 1.0)
    x = x.mul_(255.0).round_().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _palettize(image: Any) -> tuple[Any, Any]:
    """Quantize one frame to 256 colors for GIF.

    Args:
        image: ``[H, W, 3]`` uint8 RGB numpy array.

    Returns:
        ``(indices, palette)`` as PyAV's ``pal8`` wants them: ``[H, W]`` uint8 indices and a
        ``[256, 4]`` uint8 ARGB palette.
    """
    import numpy as np
    from PIL import Image

    quantized = Image.fromarray(image, mode="RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    colors = np.asarray(quantized.getpalette()[: 3 * 256], dtype=np.uint8).reshape(-1, 3)
    palette = np.zeros((256, 4), dtype=np.uint8)
    palette[:, 0] = 255  # opaque
    palette[: len(colors), 1:] = colors
    return np.ascontiguousarray(np.asarray(quantized, dtype=np.uint8)), palette


@contextmanager
def _whole_frame():
    """Holds Ctrl-C and SIGTERM while one frame is written and counted, then delivers them: an
    interrupted run's file and its ``frames_written`` always agree (main thread only, where
    signals arrive; elsewhere it does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple[int, Any]] = []
    held = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            held[sig] = signal.signal(sig, lambda signum, frame: pending.append((signum, frame)))
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
        for signum, frame in pending[:1]:
            handler = held.get(signum)
            if callable(handler):
                handler(signum, frame)  # e.g. raises KeyboardInterrupt, or the CLI's Stopped
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)


def _is_folder(path: str | os.PathLike) -> bool:
    text = os.fspath(path)
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


class VideoWriter:
    """Write frames to a video file (or a PNG folder) as they arrive.

    Nothing is buffered beyond the encoder's own few frames of look-ahead, so a video of any
    length is written with constant memory. Use it as a context manager::

        with VideoWriter("out/clip.mp4", fps=16) as video:
            for chunk in stream:          # each chunk [T, 3, H, W] in 0..1
                video.write(chunk)

    File targets are written under a temporary name beside the target, ``name.partial.ext``
    (e.g. ``clip.partial.mp4``), and renamed into place by :meth:`close`. A process that dies
    before closing therefore never leaves a half-written file under the final name, and what it
    leaves under the temporary name plays: MP4 is fragmented with a keyframe every second of
    video and the encoder holds no frames back, so the file on disk is playable up to its last
    complete second at any moment. If an
    exception (including ``KeyboardInterrupt``) escapes the ``with`` block, the writer still
    finalizes the file and renames it into place, since the frames written so far make a valid,
    shorter video; then the exception propagates. If finalizing itself fails, the temporary
    file is left under its ``.partial`` name and the original exception propagates. An existing
    file at the target is replaced. If no frame was written, no file is created.

    PNG folders get ``000000.png``, ``000001.png``, ..., numbered across :meth:`write` calls;
    each file is written under a temporary name and renamed, so every numbered PNG is complete.
    The folder must not already hold numbered frames (``FileExistsError``), so frames of two
    runs are never mixed.

    Sizes: H.264 and VP9 store yuv420p, which needs an even height and width. Odd sizes raise a
    ``ValueError`` for ``.mp4`` and ``.webm`` (pad or crop to an even size first); GIF and PNG
    accept any size. All frames of one writer must have the same size.

    GIF stores at most 256 colors per frame: each frame gets its own palette (Pillow's fast
    octree quantizer), so flat colors survive exactly and gradients band slightly. GIF frame
    delays are in 1/100 s, so rates above 50 fps do not play back at their true speed.

    Args:
        path: Target file (extension one of :data:`SUPPORTED`) or folder. A missing parent
            folder (or the folder itself) is created.
        fps: Frame rate, an int, float or :class:`fractions.Fraction` (e.g.
            ``Fraction(30000, 1001)``); floats are rounded to a fraction with denominator
            at most 1001.
        quality: Constant-quality setting for ``.mp4``/``.webm``: the CRF (lower is better;
            default 18 for H.264, 30 for VP9), or the fixed quantizer (2..31, default 3) for the
            MPEG-4 fallback. Ignored for GIF and PNG.

    Attributes:
        path: The final path (for a folder, the folder).
        fps: The frame rate as a :class:`fractions.Fraction`.
        frames_written: Frames written so far.

    Raises:
        ValueError: Unsupported extension, or ``fps <= 0``.
        FileExistsError: A PNG folder that already holds numbered frames.
    """

    def __init__(self, path: str | os.PathLike, fps: int | float | Fraction, *, quality: int | None = None):
        self.folder = _is_folder(path)
        self.path = Path(path)
        ext = "" if self.folder else self.path.suffix.lower()
        if not self.folder and ext not in SUPPORTED:
            raise ValueError(
                f"unsupported video extension {ext or '(none)'!r} in {os.fspath(path)!r}; "
                f"supported: {', '.join(SUPPORTED)}, or a {_FOLDER}"
            )
        rate = Fraction(fps).limit_denominator(1001)
        if rate <= 0:
            raise ValueError(f"fps must be positive, got {fps!r}")
        self.ext = ext
        self.fps = rate
        self.quality = quality
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (H, W) of the first frame
        self.closed = False
        self._container: Any = None
        self._stream: Any = None
        self.partial_path = None if self.folder else self.path.with_name(f"{self.path.stem}.partial{ext}")
        if self.folder:
            self.path.mkdir(parents=True, exist_ok=True)
            if any(_FRAME_NAME.match(p.name) for p in self.path.iterdir()):
                raise FileExistsError(
                    f"{self.path} already holds numbered frames (000000.png, ...); "
                    "choose an empty folder so frames of two runs are not mixed"
                )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    # -- writing -------------------------------------------------------------------------------

    def _check(self, frames: torch.Tensor) -> None:
        """Validate one chunk before anything of it is written.

        Args:
            frames: ``[T, 3, H, W]`` floating-point tensor.
        """
        if self.closed:
            raise RuntimeError(f"write() on a closed VideoWriter ({self.path})")
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"frames must be [T, 3, H, W] (RGB in 0..1), got {shape}")
        if not frames.is_floating_point():
            raise ValueError(f"frames must be floating point in 0..1, got dtype {frames.dtype}")
        h, w = int(frames.shape[2]), int(frames.shape[3])
        if h == 0 or w == 0:
            raise ValueError(f"frames must have a non-empty size, got {tuple(frames.shape)}")
        if self.size is not None and (h, w) != self.size:
            raise ValueError(
                f"frame size changed: this writer has {self.size[0]}x{self.size[1]} (HxW) frames, "
                f"got {h}x{w}; all frames of one video must have the same size"
            )
        if self.ext in (".mp4", ".webm") and (h % 2 or w % 2):
            raise ValueError(
                f"frame size {h}x{w} (HxW) is odd; {self.ext} stores yuv420p, which needs even "
                "sizes: use an even height and width (pad or crop the frames)"
            )

    def _open_container(self, h: int, w: int) -> None:
        """Open the temporary file and its encoder for ``h x w`` frames."""
        import av

        codec = _first_encoder(_ENCODERS[self.ext])
        container = av.open(os.fspath(self.partial_path), mode="w", format=_CONTAINER_FORMAT[self.ext],
                             options=dict(_CONTAINER_OPTIONS[self.ext]))
        q = self.quality if self.quality is not None else _DEFAULT_QUALITY.get(codec)
        options: dict[str, str] = {}
        gop = str(max(1, round(self.fps)))  # a keyframe, so a fragment on disk, every second of video
        if codec == "libx264":
            # zerolatency: no B-frames or look-ahead, so each frame reaches the file as it is written.
            options = {"crf": str(q), "preset": "veryfast", "tune": "zerolatency", "g": gop, "keyint_min": gop}
        elif codec == "mpeg4":
            options = {"g": gop}
        elif codec == "libvpx-vp9":
            # Constant quality (crf with b:v 0), tuned to keep up with generation.
            options = {"crf": str(q), "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
        elif codec == "libvpx":
            # VP8 takes crf only under a bitrate cap.
            options = {"crf": str(q), "b": str(max(1_000_000, 4 * w * h)), "deadline": "realtime", "cpu-used": "8"}
        try:
            stream = container.add_stream(codec, rate=self.fps, options=options)
            stream.width, stream.height = w, h
            stream.pix_fmt = "pal8" if codec == "gif" else "yuv420p"
            stream.codec_context.time_base = 1 / self.fps
            if codec == "mpeg4":
                stream.codec_context.qscale = int(q)
        except BaseException:
            container.close()
            raise
        self._container, self._stream = container, stream

    def write(self, frames: torch.Tensor) -> None:
        """Append frames to the video.

        Args:
            frames: ``[T, 3, H, W]`` floating-point tensor with RGB values in 0..1, on any
                device; values are clamped to 0..1 and rounded to 8 bits. ``T`` may be 0.

        Raises:
            ValueError: Wrong shape or dtype, a size other than the first write's, or an odd
                size for ``.mp4``/``.webm``. Nothing of a rejected chunk is written.
            RuntimeError: The writer is closed.
        """
        self._check(frames)
        if frames.shape[0] == 0:
            return
        h, w = int(frames.shape[2]), int(frames.shape[3])
        rgb = _to_rgb24(frames)  # [T, H, W, 3] uint8
        if self.folder:
            self._write_pngs(rgb)
        else:
            self._encode(rgb, h, w)
        self.size = (h, w)

    def _write_pngs(self, rgb: Any) -> None:
        """Write each of ``rgb`` (``[T, H, W, 3]`` uint8) as the next numbered PNG."""
        from PIL import Image

        for image in rgb:
            with _whole_frame():
                name = f"{self.frames_written:06d}"
                tmp = self.path / f"{name}.partial.png"
                Image.fromarray(image, mode="RGB").save(tmp, format="PNG")
                os.replace(tmp, self.path / f"{name}.png")
                self.frames_written += 1

    def _encode(self, rgb: Any, h: int, w: int) -> None:
        """Encode and mux each of ``rgb`` (``[T, H, W, 3]`` uint8)."""
        import av

        if self._container is None:
            self._open_container(h, w)
        stream, container = self._stream, self._container
        for image in rgb:
            if stream.codec_context.name == "gif":
                frame = av.VideoFrame.from_ndarray(_palettize(image), format="pal8")
            else:
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            with _whole_frame():  # an interrupt lands between frames, never inside one
                frame.pts = self.frames_written
                frame.time_base = stream.codec_context.time_base
                for packet in stream.encode(frame):
                    container.mux(packet)
                self.frames_written += 1

    # -- finishing -----------------------------------------------------------------------------

    def close(self) -> Path:
        """Flush the encoder, finish the file and rename it into place. Safe to call twice.

        Returns:
            The final path (the folder for PNGs). For a file with no frames written, no file
            is created and the path does not exist.
        """
        if self.closed:
            return self.path
        self.closed = True
        if self._container is not None:
            container, self._container = self._container, None
            try:
                for packet in self._stream.encode(None):
                    container.mux(packet)
            finally:
                container.close()
            os.replace(self.partial_path, self.path)
        return self.path

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # Keep what was produced: finalize the shorter video, but never mask the original error.
        try:
            self.close()
        except Exception as error:  # noqa: BLE001 - the original exception matters more
            if hasattr(exc, "add_note"):
                exc.add_note(f"VideoWriter: finalizing {self.partial_path} also failed: {error!r}")

    def __repr__(self) -> str:
        fps, n = getattr(self, "fps", None), getattr(self, "frames_written", 0)
        return f"VideoWriter({os.fspath(self.path)!r}, fps={fps}, frames_written={n})"


def open_writer(path: str | os.PathLike, fps: int | float | Fraction) -> VideoWriter:
    """Open a :class:`VideoWriter` with default quality (see there for formats and behaviour).

    Args:
        path: Target file (``.mp4``, ``.webm``, ``.gif``) or folder for numbered PNGs.
        fps: Frame rate.

    Returns:
        The writer; use it as a context manager or call ``close()``.
    """
    return VideoWriter(path, fps)


def read_video(path: str | os.PathLike) -> torch.Tensor:
    """Read a whole video into memory.

    Args:
        path: A ``.mp4``, ``.webm`` or ``.gif`` file (anything PyAV decodes), or a folder of
            PNGs (read in name order; ``*.partial.png`` temporaries are skipped).

    Returns:
        ``[T, 3, H, W]`` float32 tensor on the CPU, RGB in 0..1.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: It holds no frames, or frames of different sizes.
    """
    import numpy as np

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no video at {path}")
    images = []
    if path.is_dir():
        from PIL import Image

        for file in sorted(path.glob("*.png")):
            if file.name.endswith(".partial.png"):
                continue
            with Image.open(file) as image:
                images.append(np.asarray(image.convert("RGB")))
    else:
        import av

        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            for frame in container.decode(container.streams.video[0]):
                images.append(frame.to_ndarray(format="rgb24"))
    if not images:
        raise ValueError(f"{path} holds no frames")
    sizes = {image.shape for image in images}
    if len(sizes) > 1:
        raise ValueError(f"{path} holds frames of different sizes: {sorted(sizes)}")
    video = torch.from_numpy(np.stack(images))  # [T, H, W, 3] uint8
    return video.permute(0, 3, 1, 2).float().div_(255.0)
