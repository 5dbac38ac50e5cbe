"""A folder of captioned video files as a source of training clips.

Layout: any video files PyAV decodes (``.mp4``, ``.webm``, ``.mov``, ``.mkv``, ``.avi``,
``.gif``), in the folder or below it, each with a caption from (first match wins)

- a sidecar text file beside it with the same stem (``walk.mp4`` -> ``walk.txt``),
- ``captions.jsonl`` in its folder: one ``{"file": "walk.mp4", "caption": "..."}`` per line,
- ``captions.csv`` in its folder: columns ``file`` and ``caption``.

Every clip is resampled to the model's frame rate, its shorter side scaled to the training size
and cropped square (centre, or at random). A file that cannot be decoded, a video without a
caption and a video shorter than the clip length are skipped with a warning and counted in
:attr:`ClipFolder.report`; a folder left with no usable video is a :class:`DataError` that says why,
raised before any training starts.

The split is deterministic and stable as files are added: a video belongs to the validation
split when the hash of its path inside the folder falls below ``val_share``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["VIDEO_SUFFIXES", "ClipFolder", "DataError", "FolderReport", "VideoEntry"]

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")


class DataError(ValueError):
    """A clip folder that cannot be trained on (no usable video, a malformed caption table)."""


@dataclass(frozen=True)
class VideoEntry:
    """One usable video: its file, caption and length in frames at the folder's frame rate."""

    path: Path
    caption: str
    frames: int


@dataclass
class FolderReport:
    """What a scan found: videos used, and each skipped file with the reason."""

    used: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path inside the folder, reason)

    def count(self, reason: str) -> int:
        return sum(1 for _, why in self.skipped if why.startswith(reason))

    def skipped_summary(self) -> str:
        """The skipped files counted by reason, e.g. ``1 no caption, 2 too short``."""
        kinds: dict[str, int] = {}
        for _, why in self.skipped:
            kind = why.split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))

    def summary(self) -> str:
        return f"{self.used} videos used" + (f", skipped {self.skipped_summary()}" if self.skipped else "")


def _captions_in(folder: Path) -> dict[str, str]:
    """The captions that ``captions.jsonl`` and ``captions.csv`` in ``folder`` give, by file name."""
    found: dict[str, str] = {}
    table = folder / "captions.csv"
    if table.is_file():
        with table.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
                raise DataError(f"{table} needs the columns 'file' and 'caption', has {reader.fieldnames}")
            for row in reader:
                found[row["file"].strip()] = (row["caption"] or "").strip()
    lines = folder / "captions.jsonl"
    if lines.is_file():
        for number, line in enumerate(lines.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                found[str(item["file"]).strip()] = str(item["caption"]).strip()
            except (ValueError, KeyError, TypeError) as err:
                raise DataError(f"{lines} line {number}: expected {{\"file\": ..., \"caption\": ...}}, "
                                 f"got {line[:80]!r} ({err})") from None
    return found


def _probe(path: Path) -> tuple[float, int]:
    """(duration in seconds, decoded frame count) by decoding the file's first video stream."""
    import av

    with av.open(os.fspath(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        times = [frame.time for frame in container.decode(stream) if frame.time is not None]
        rate = stream.average_rate or stream.guessed_rate or Fraction(16)
    if not times:
        raise ValueError("no frames")
    # The last frame lasts one source frame: a 2-second clip at 16 fps has frames at 0..1.9375 s.
    return times[-1] - times[0] + 1.0 / float(rate), len(times)


def _hash_share(relative: str) -> float:
    digest = hashlib.sha1(relative.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


class ClipFolder:
    """Captioned videos in ``root`` as clips of ``frames`` frames at ``fps``, ``size`` x ``size``.

    Args:
        root: the folder (searched recursively).
        frames: the clip length a model needs; shorter videos are skipped.
        fps: the model's frame rate; clips are resampled to it by timestamp.
        size: the square training size in pixels.
        split: ``"train"``, ``"val"`` or ``"all"``.
        val_share: the share of videos in the validation split (by path hash, see the module).
        crop: ``"center"`` or ``"random"`` (a random square of the scaled frame per clip).
        warn: report each skipped file with ``warnings.warn``.

    :meth:`batch` has the signature of the synthetic world's, so the codec trainer and the latent
    pool read a folder as they read the world.
    """

    def __init__(self, root: str | os.PathLike, frames: int, fps: int = 16, size: int = 64,
                 split: str = "train", val_share: float = 0.05, crop: str = "center", warn: bool = True):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
        if frames < 1 or fps < 1 or size < 8:
            raise ValueError(f"need frames >= 1, fps >= 1 and size >= 8, got {frames}, {fps}, {size}")
        if not 0 <= val_share < 1:
            raise ValueError(f"val_share must be in [0, 1), got {val_share}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a folder (it should hold video files with captions)")
        self.frames, self.fps, self.size, self.crop = frames, fps, size, crop
        self.report = FolderReport()
        self.videos: list[VideoEntry] = []
        self._scan(split, val_share, warn)

    def _scan(self, split: str, val_share: float, warn: bool) -> None:
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        tables: dict[Path, dict[str, str]] = {}
        seen = 0
        for path in files:
            relative = path.relative_to(self.root).as_posix()
            in_val = _hash_share(relative) < val_share
            if split != "all" and in_val != (split == "val"):
                continue
            seen += 1

            def skip(reason: str) -> None:
                self.report.skipped.append((relative, reason))
                if warn:
                    warnings.warn(f"skipping {relative}: {reason}", stacklevel=3)

            if path.parent not in tables:
                tables[path.parent] = _captions_in(path.parent)
            sidecar = path.with_suffix(".txt")
            caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else \
                tables[path.parent].get(path.name, "")
            if not caption:
                skip(f"no caption: add {sidecar.name}, or a line in captions.jsonl / captions.csv")
                continue
            try:
                seconds, _ = _probe(path)
            except Exception as err:  # noqa: BLE001 - any decoder failure means the file is unusable
                skip(f"unreadable: {type(err).__name__}: {err}")
                continue
            length = int(seconds * self.fps + 1e-6)
            if length < self.frames:
                skip(f"too short: {seconds:.2f} s is {length} frames at {self.fps} fps, clips need {self.frames}")
                continue
            self.videos.append(VideoEntry(path, caption, length))
        self.report.used = len(self.videos)
        if not self.videos:
            what = f"{len(files)} video files, {seen} in the split" if files else \
                f"no video files ({', '.join(VIDEO_SUFFIXES)})"
            reasons = f"; skipped {self.report.skipped_summary()}" if self.report.skipped else ""
            raise DataError(f"{self.root}: no usable video in the {split} split ({what}{reasons}). Each video "
                            f"needs a caption and at least {self.frames} frames ({self.frames / self.fps:.2f} s "
                            f"at {self.fps} fps).")

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def captions(self) -> list[str]:
        return [v.caption for v in self.videos]

    def read(self, index: int) -> Tensor:
        """Video ``index`` whole, resampled to ``fps`` and scaled so its shorter side is ``size``:
        ``[T, 3, h, w]`` uint8."""
        import av

        entry = self.videos[index]
        wanted = [k / self.fps for k in range(entry.frames)]
        picked: list[Tensor] = []
        last, scaled = None, None  # the latest decoded frame, and it scaled once it is used

        def take() -> None:
            nonlocal scaled
            if scaled is None:
                scaled = self._scaled(last)
            picked.append(scaled)

        with av.open(os.fspath(entry.path)) as container:
            t0 = None
            for frame in container.decode(container.streams.video[0]):
                t = frame.time or 0.0
                t0 = t if t0 is None else t0
                while last is not None and len(picked) < len(wanted) and t - t0 > wanted[len(picked)] + 1e-6:
                    take()  # `last` is the latest frame at or before the wanted time
                if len(picked) == len(wanted):
                    break
                last, scaled = frame, None
        while len(picked) < len(wanted):
            take()
        return torch.stack(picked)

    def _scaled(self, frame) -> Tensor:
        image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)  # [3, H, W] uint8
        h, w = image.shape[1:]
        scale = self.size / min(h, w)
        out = (max(self.size, round(h * scale)), max(self.size, round(w * scale)))
        if out != (h, w):
            image = F.interpolate(image[None].float(), size=out, mode="bilinear", antialias=True,
                                  align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        return image

    def _crop(self, video: Tensor, gen: torch.Generator) -> Tensor:  # [T, 3, h, w] -> [T, 3, S, S]
        h, w = video.shape[2:]
        s = self.size
        if self.crop == "random":
            top = int(torch.randint(h - s + 1, (1,), generator=gen))
            left = int(torch.randint(w - s + 1, (1,), generator=gen))
        else:
            top, left = (h - s) // 2, (w - s) // 2
        return video[:, :, top:top + s, left:left + s]

    def batch(self, n: int, frames: int, gen: torch.Generator) -> tuple[Tensor, list[str]]:
        """``n`` random clips of ``frames`` frames: ``[n, frames, 3, size, size]`` float in 0..1, and
        their captions. Each video picked is decoded once per call, however many clips it gives."""
        if frames > self.frames:
            raise ValueError(f"clips of {frames} frames asked of a folder scanned for {self.frames}-frame clips")
        pick = torch.randint(len(self.videos), (n,), generator=gen).tolist()
        clips: list[Tensor | None] = [None] * n
        for index in sorted(set(pick)):
            video = self.read(index)
            for slot in (i for i, p in enumerate(pick) if p == index):
                start = int(torch.randint(video.shape[0] - frames + 1, (1,), generator=gen))
                clips[slot] = self._crop(video[start:start + frames], gen)
        return torch.stack(clips).float().div_(255.0), [self.videos[i].caption for i in pick]
