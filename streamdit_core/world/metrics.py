"""Offline video metrics: VBench-style quality scores and prompt adherence in the synthetic world.

VBench (Huang et al., 2024) scores videos with downloaded networks (DINO, CLIP, RAFT, AMT).
These definitions keep VBench's idea for each dimension but read it off the pixels of the
synthetic world (one shape over a flat background), so they run offline and are exact about
what they measure. Frames are ``[T, 3, H, W]`` float in 0..1; every score is in 0..1.

Detection (per frame, :func:`detect`): the background is the per-channel median of the frame;
the subject is every pixel farther than 0.25 (RGB distance) from it; its color is the nearest
palette color to the mean of its core pixels; its shape is the circle, square or triangle
template of the same area and centre that overlaps its half-contrast mask most (IoU); its centre
is a circular mean, so a shape wrapping over a border is one shape.

- **subject consistency**: cosine similarity of the subject (a crop centred on it, mean
  removed) between each frame and the first frame and between consecutive frames, averaged
  (VBench averages the same two similarities of DINO features).
- **background consistency**: 1 - mean absolute change of the background color between
  consecutive frames and against the first frame.
- **temporal flickering**: 1 - mean absolute change of pixels outside the subject between
  consecutive frames (VBench: 1 - mean absolute frame difference, on static videos).
- **motion smoothness**: ``1 - a / (v + a)`` with ``v`` the mean speed of the subject centre
  and ``a`` its mean acceleration, both in pixels per frame: 1 for constant velocity, 1/2 when
  the jitter is as large as the motion (VBench: error of a frame interpolator).
- **dynamic degree**: share of windows whose subject moves at least 0.5 pixel per frame
  (VBench: share of videos with optical flow above a threshold).
- **adherence**: share of windows (16 frames, one second) whose majority color, shape,
  background and mean heading equal the prompt's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from .scenes import BACKGROUNDS, COLORS, DIRECTIONS, Scene

__all__ = ["FrameDetection", "VideoScores", "detect", "score_video", "summarize"]

_FG_THRESHOLD = 0.25
_COLOR_NAMES = list(COLORS)
_COLOR_TABLE = torch.tensor([COLORS[c] for c in _COLOR_NAMES])  # [6, 3]
_BG_NAMES = list(BACKGROUNDS)
_BG_TABLE = torch.tensor([BACKGROUNDS[c] for c in _BG_NAMES])  # [4, 3]
_DIR_NAMES = list(DIRECTIONS)
_DIR_TABLE = torch.tensor([DIRECTIONS[d] for d in _DIR_NAMES])  # [8, 2]
WINDOW = 16  # frames per adherence window (one second at 16 fps)
CROP = 48  # subject crop side in pixels at 64x64: holds the largest shape (37 pixels across)


@dataclass
class FrameDetection:
    """Per-frame readings, each a length-T sequence (None where no subject was found)."""

    present: Tensor  # [T] bool
    color: list[str | None]
    shape: list[str | None]
    background: list[str]
    center: Tensor  # [T, 2] (x, y) pixels, nan where absent
    area: Tensor  # [T] subject pixels
    size: int  # frame width in pixels (the period of a wrapping position)


def _circular_mean(weights: Tensor, size: int) -> Tensor:
    """Centre of mass on a ring of ``size`` positions; weights ``[T, size]`` -> ``[T]``."""
    angle = (torch.arange(size, dtype=torch.float32) + 0.5) * (2 * math.pi / size)
    s = (weights * angle.sin()).sum(-1)
    c = (weights * angle.cos()).sum(-1)
    return torch.remainder(torch.atan2(s, c), 2 * math.pi) * size / (2 * math.pi)


def detect(frames: Tensor) -> FrameDetection:
    """Reads subject and background attributes from frames ``[T, 3, H, W]`` in 0..1."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [T, 3, H, W], got {list(frames.shape)}")
    frames = frames.detach().float().cpu().clamp(0, 1)
    T, _, H, W = frames.shape
    bg = frames.flatten(2).median(dim=2).values  # [T, 3]
    dist = (frames - bg[:, :, None, None]).norm(dim=1)  # [T, H, W]
    mask = dist > _FG_THRESHOLD  # [T, H, W]
    area = mask.flatten(1).sum(1).float()  # [T]
    present = area >= 4
    background = [_BG_NAMES[i] for i in torch.cdist(bg, _BG_TABLE).argmin(1).tolist()]
    # Soft weights (the anti-aliased edge counts by how far it is from the background) give a
    # sub-pixel centre, so a shape moving at constant speed has a constant measured step.
    weight = (dist / dist.flatten(1).amax(1).clamp_min(1e-6)[:, None, None]) * (dist > _FG_THRESHOLD / 2)
    cx = _circular_mean(weight.sum(1), W)  # [T]
    cy = _circular_mean(weight.sum(2), H)  # [T]
    colors, shapes = [], []
    for t in range(T):
        if not present[t]:
            colors.append(None)
            shapes.append(None)
            continue
        # Centre the subject (it may wrap over a border), then read its core color and its shape.
        oy, ox = H // 2 - int(cy[t]), W // 2 - int(cx[t])
        core = dist[t] > 0.5 * dist[t][mask[t]].max()
        mean = frames[t][:, core].mean(1)  # [3]
        colors.append(_COLOR_NAMES[int(torch.cdist(mean[None], _COLOR_TABLE).argmin())])
        # Half-contrast mask: a blurred edge moves it by little, so areas stay honest.
        half = dist[t] > 0.5 * float((mean - bg[t]).norm())
        m = torch.roll(half, (oy, ox), dims=(0, 1))  # [H, W]
        centre = (float(cx[t]) + ox, float(cy[t]) + oy)
        shapes.append(_best_template(m, centre))
    center = torch.stack([cx, cy], 1)  # [T, 2]
    center[~present] = float("nan")
    return FrameDetection(present, colors, shapes, background, center, area, W)


def _best_template(mask: Tensor, centre: tuple[float, float]) -> str:
    """The shape whose template of the same area, at the same centre, overlaps ``mask`` most."""
    from .scenes import SHAPES, _sdf

    H, W = mask.shape
    area = float(mask.sum())
    # Half sizes giving each template the subject's area (see data.world._sdf for the shapes).
    size = {"circle": math.sqrt(area / math.pi), "square": math.sqrt(area) / 2 / 0.85,
            "triangle": math.sqrt(4 * area / (3 * math.sqrt(3))) / 1.15}
    dx = torch.arange(W, dtype=torch.float32)[None, :] + 0.5 - centre[0]  # [1, W]
    dy = torch.arange(H, dtype=torch.float32)[:, None] + 0.5 - centre[1]  # [H, 1]
    best, name = -1.0, "circle"
    for shape in SHAPES:
        template = _sdf(shape, dx, dy, torch.tensor(size[shape])) < 0  # [H, W]
        iou = float((template & mask).sum()) / max(1.0, float((template | mask).sum()))
        if iou > best:
            best, name = iou, shape
    return name


def _majority(values: list[str | None]) -> str | None:
    seen = [v for v in values if v is not None]
    return max(set(seen), key=seen.count) if seen else None


def _steps(center: Tensor, size: int) -> Tensor:
    """Frame-to-frame displacement ``[T-1, 2]``, taking the short way round a wrapping border."""
    d = center[1:] - center[:-1]
    return torch.remainder(d + size / 2, size) - size / 2


def _heading(steps: Tensor) -> str | None:
    ok = ~steps.isnan().any(1)
    if ok.sum() == 0:
        return None
    mean = steps[ok].mean(0)
    if mean.norm() < 0.25:
        return None  # not moving
    return _DIR_NAMES[int((_DIR_TABLE @ (mean / mean.norm())).argmax())]


@dataclass
class VideoScores:
    """Scores of one video (0..1, higher is better) and its adherence per attribute."""

    subject_consistency: float
    background_consistency: float
    temporal_flickering: float
    motion_smoothness: float
    dynamic_degree: float
    color: float
    shape: float
    direction: float
    background: float
    subject_present: float  # share of frames with a detected subject (0 = collapsed to background)
    brightness: float  # mean pixel value
    windows: list[dict] = field(default_factory=list)  # per window: detected attributes


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-8)


def score_video(frames: Tensor, prompts: Scene | list[Scene], window: int = WINDOW) -> VideoScores:
    """Scores a video against the scene each frame was asked for.

    Args:
        frames: ``[T, 3, H, W]`` in 0..1.
        prompts: one Scene for the whole video, or one per frame (a prompt schedule).
        window: frames per adherence window; the last partial window is dropped.
    """
    T, _, H, W = frames.shape
    if isinstance(prompts, Scene):
        prompts = [prompts] * T
    if len(prompts) != T:
        raise ValueError(f"need one Scene per frame ({T}), got {len(prompts)}")
    if T < 3:
        raise ValueError(f"need at least 3 frames to score motion, got {T}")
    det = detect(frames)
    frames = frames.detach().float().cpu().clamp(0, 1)
    # Subject crops centred on the subject, mean removed.
    crops = []
    half = CROP * H // 128
    for t in range(T):
        if not det.present[t]:
            crops.append(None)
            continue
        f = torch.roll(frames[t], (H // 2 - int(det.center[t, 1]), W // 2 - int(det.center[t, 0])), dims=(1, 2))
        c = f[:, H // 2 - half:H // 2 + half, W // 2 - half:W // 2 + half].flatten()
        crops.append(c - c.mean())
    sims = []
    for t in range(1, T):
        if crops[t] is None or crops[t - 1] is None or crops[0] is None:
            sims.append(0.0)
            continue
        sims.append(0.5 * float(_cosine(crops[t], crops[0]) + _cosine(crops[t], crops[t - 1])))
    subject = sum(sims) / len(sims)
    bg = frames.flatten(2).median(dim=2).values  # [T, 3]
    background_consistency = 1 - 0.5 * float((bg[1:] - bg[:-1]).abs().mean() + (bg[1:] - bg[:1]).abs().mean())
    dist = (frames - bg[:, :, None, None]).norm(dim=1) > _FG_THRESHOLD  # [T, H, W]
    still = ~(dist[1:] | dist[:-1])  # [T-1, H, W] background in both frames
    change = (frames[1:] - frames[:-1]).abs().mean(1)  # [T-1, H, W]
    flicker = 1 - float((change * still).sum() / still.sum().clamp_min(1))
    steps = _steps(det.center, W)  # [T-1, 2]
    ok = ~steps.isnan().any(1)
    speed = steps[ok].norm(dim=1).mean() if ok.any() else torch.tensor(0.0)
    acc = steps[1:] - steps[:-1]
    ok2 = ~acc.isnan().any(1)
    jerk = acc[ok2].norm(dim=1).mean() if ok2.any() else torch.tensor(0.0)
    smooth = 1 - float(jerk / (speed + jerk).clamp_min(1e-8)) if ok2.any() else 0.0
    # Adherence per window.
    wins, hits = [], {"color": 0, "shape": 0, "direction": 0, "background": 0}
    moving = 0
    n_win = T // window
    for w in range(n_win):
        sl = slice(w * window, (w + 1) * window)
        want = _majority_scene(prompts[sl])
        got = {
            "color": _majority(det.color[sl]),
            "shape": _majority(det.shape[sl]),
            "background": _majority(det.background[sl]),
            "direction": _heading(steps[w * window:(w + 1) * window - 1]),
        }
        st = steps[w * window:(w + 1) * window - 1]
        okw = ~st.isnan().any(1)
        if okw.any() and float(st[okw].norm(dim=1).mean()) >= 0.5:
            moving += 1
        for k in hits:
            hits[k] += int(got[k] == getattr(want, k))
        wins.append({"want": want.caption, **got})
    n = max(1, n_win)
    return VideoScores(
        subject_consistency=subject,
        background_consistency=background_consistency,
        temporal_flickering=flicker,
        motion_smoothness=smooth,
        dynamic_degree=moving / n,
        color=hits["color"] / n,
        shape=hits["shape"] / n,
        direction=hits["direction"] / n,
        background=hits["background"] / n,
        subject_present=float(det.present.float().mean()),
        brightness=float(frames.mean()),
        windows=wins,
    )


def _majority_scene(scenes: list[Scene]) -> Scene:
    return max(set(scenes), key=scenes.count)


def summarize(scores: list[VideoScores]) -> dict[str, float]:
    """Mean of every numeric score over videos."""
    if not scores:
        raise ValueError("no videos to summarize")
    keys = [k for k, v in asdict(scores[0]).items() if isinstance(v, float)]
    return {k: sum(getattr(s, k) for s in scores) / len(scores) for k in keys}
