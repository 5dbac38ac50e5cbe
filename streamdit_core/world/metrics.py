"""Offline video metrics: VBench-style quality scores and prompt adherence in the synthetic world.

VBench (Huang et al., 2024) scores videos with downloaded networks (DINO, CLIP, RAFT, AMT).
These definitions keep VBench's idea for each dimension but read it off the pixels of the
synthetic world (one shape over a flat background), so they run offline and are exact about
what they measure. Frames are ``[T, 3, H, W]`` float in 0..1; every score is in 0..1.

Detection (per frame, :func:`detect`): the background is the per-channel median of the frame;
foreground is every pixel farther than 0.25 (RGB distance) from it, cut into 8-connected regions
on the torus (the world wraps, so a shape crossing a border is one region); a *subject* is a
region of at least :data:`MIN_SUBJECT` pixels and at most half the frame. The largest subject
gives the centre (circular, sub-pixel) and the color (the palette color nearest its core). Its
shape is read strictly: the
outline's radius along 96 rays from its centroid is fitted to the circle, square and triangle
of the world (same orientation, best scale), and the shape is named only when the best fit is
within :data:`SHAPE_TOLERANCE` and the frame holds exactly one subject; otherwise it is None,
which every adherence score counts as wrong (a rounded square, a hexagon, a turned square, a
star, a blob, two circles).

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
- **dynamic degree**: the subject's speed over the world's top speed, capped at 1, averaged over
  frame pairs (VBench: share of videos with optical flow above a threshold; a threshold read 1.0
  for every generated video, so this one is graded: still 0, half speed 0.5).
- **adherence**: share of windows (16 frames, one second) whose majority color, shape,
  background and mean heading equal the prompt's, and (``speed``) whose mean speed is within the
  world's range (:data:`~streamdit_core.world.scenes.SPEED_RANGE`, widened 5%).
- **one subject**: share of frames with exactly one subject. **teleports**: share of frame
  pairs (both with a subject) whose centre moves farther than :data:`TELEPORT` times the
  world's top speed, the short way round the torus (a subject that splits at a border, or
  vanishes here and appears there).
- **background noise**: per frame, the mean absolute deviation from the background color of the
  pixels more than 2 pixels away from every subject; a video reports its noisiest frame and the
  share of frames above :data:`NOISY`. The world's backgrounds read 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from .scenes import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, SPEED_RANGE, Scene, _sdf

__all__ = ["FrameDetection", "VideoScores", "detect", "score_video", "strays", "summarize", "torus_dilate"]

_FG_THRESHOLD = 0.25
_COLOR_NAMES = list(COLORS)
_COLOR_TABLE = torch.tensor([COLORS[c] for c in _COLOR_NAMES])  # [6, 3]
_BG_NAMES = list(BACKGROUNDS)
_BG_TABLE = torch.tensor([BACKGROUNDS[c] for c in _BG_NAMES])  # [4, 3]
_DIR_NAMES = list(DIRECTIONS)
_DIR_TABLE = torch.tensor([DIRECTIONS[d] for d in _DIR_NAMES])  # [8, 2]
WINDOW = 16  # frames per adherence window (one second at 16 fps)
SPEED_SLACK = 0.05  # speed adherence accepts the world's range widened by this share
TELEPORT = 3.0  # a subject step longer than this many times the world's top speed is a jump
NOISY = 0.02  # a background farther than this (about 5/255) from flat, on average, is noisy
CROP = 48  # subject crop side in pixels at 64x64: holds the largest shape (37 pixels across)


# A subject is a connected region (8-neighbours, on the torus) of at least this many pixels at
# 64x64 (scaled with the frame's area): a sixth of the smallest shape the world draws (a triangle
# of half size 12, about 250 pixels). Smaller regions are specks, not subjects.
MIN_SUBJECT = 40
# A shape reading needs the subject's outline within this distance of the template's, as the
# root-mean-square radial error over 96 rays from the centroid, in units of the template's half
# size, at 64x64 and larger (below, it grows as 64 / width: pixels are coarser). Measured at
# 64x64: the world's own shapes read at most 0.004 (circle), 0.009 (square), 0.011 (triangle)
# at any sub-pixel position; a regular hexagon reads 0.043 (nearest: circle), a square with
# 6-pixel round corners 0.037, with 9-pixel corners 0.048, a square turned 45 degrees 0.10, an
# ellipse of axes 16 and 11 0.13, a five-point star 0.20.
SHAPE_TOLERANCE = 0.025
_ANGLES = 96  # rays of the outline profile
_STEP = 0.25  # pixels between samples along a ray


@dataclass
class FrameDetection:
    """Per-frame readings, each a length-T sequence (None where no subject was found).

    The subject of a frame is its largest connected region; ``subjects`` counts the regions of at
    least :data:`MIN_SUBJECT` pixels (a wrapping shape is one region: borders join). Color,
    shape and centre are read from the subject; the shape is None unless the frame holds exactly
    one subject whose outline fits a template within :data:`SHAPE_TOLERANCE`.
    """

    present: Tensor  # [T] bool: at least one subject
    color: list[str | None]
    shape: list[str | None]
    background: list[str]
    center: Tensor  # [T, 2] (x, y) pixels of the largest subject, nan where absent
    area: Tensor  # [T] pixels of the largest subject
    size: int  # frame width in pixels (the period of a wrapping position)
    subjects: Tensor = None  # [T] number of subjects
    noise: Tensor = None  # [T] mean absolute deviation of the background pixels from the background color
    fit: Tensor = None  # [T] outline error of the best template (nan where not read)


def _circular_mean(weights: Tensor, size: int) -> Tensor:
    """Centre of mass on a ring of ``size`` positions; weights ``[T, size]`` -> ``[T]``."""
    angle = (torch.arange(size, dtype=torch.float32) + 0.5) * (2 * math.pi / size)
    s = (weights * angle.sin()).sum(-1)
    c = (weights * angle.cos()).sum(-1)
    return torch.remainder(torch.atan2(s, c), 2 * math.pi) * size / (2 * math.pi)


def torus_dilate(mask: Tensor, px: int = 1) -> Tensor:
    """Dilation of ``[..., H, W]`` masks by ``px`` pixels (square neighbourhood), borders wrapping."""
    out = mask
    for _ in range(px):
        for moved in list(_neighbours(out)):
            out = out | moved
    return out


def _neighbours(x: Tensor):
    """The 8 neighbours of every pixel of ``[..., H, W]``: ``x`` rolled one pixel each way, wrapping."""
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                yield torch.roll(x, (dy, dx), dims=(-2, -1))


def components(mask: Tensor) -> Tensor:
    """Labels ``[T, H, W]`` (int64, 0 = outside) of the 8-connected regions of masks ``[T, H, W]``
    on the torus: a region that leaves one border and comes back at the other is one region."""
    T, H, W = mask.shape
    none = H * W + 1
    lab = torch.where(mask, torch.arange(1, H * W + 1).view(1, H, W).expand(T, H, W), none)
    while True:  # every pixel takes the smallest label among its neighbours, until nothing changes
        low = lab
        for moved in _neighbours(lab):
            low = torch.minimum(low, moved)
        low = torch.where(mask, low, none)
        if torch.equal(low, lab):
            break
        lab = low
    return torch.where(mask, lab, 0)


def detect(frames: Tensor) -> FrameDetection:
    """Reads subject and background attributes from frames ``[T, 3, H, W]`` in 0..1."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [T, 3, H, W], got {list(frames.shape)}")
    frames = frames.detach().float().cpu().clamp(0, 1)
    T, _, H, W = frames.shape
    bg = frames.flatten(2).median(dim=2).values  # [T, 3]
    dist = (frames - bg[:, :, None, None]).norm(dim=1)  # [T, H, W]
    labels = components(dist > _FG_THRESHOLD)  # [T, H, W]
    min_area = max(4, round(MIN_SUBJECT * H * W / 4096))
    background = [_BG_NAMES[i] for i in torch.cdist(bg, _BG_TABLE).argmin(1).tolist()]
    subjects = torch.zeros(T, dtype=torch.long)
    area = torch.zeros(T)
    main = torch.zeros(T, H, W, dtype=torch.bool)  # the largest subject of each frame
    every = torch.zeros(T, H, W, dtype=torch.bool)  # all subjects
    for t in range(T):
        ids, counts = labels[t][labels[t] > 0].unique(return_counts=True)
        keep = counts <= H * W // 2  # a region over half the frame is not a shape of this world: noise
        ids, counts = ids[keep], counts[keep]
        big = counts >= min_area
        subjects[t] = int(big.sum())
        if subjects[t]:
            area[t] = float(counts.max())
            main[t] = labels[t] == ids[counts.argmax()]
            every[t] = torch.isin(labels[t], ids[big])
    present = subjects > 0
    # Background noise: how far the pixels away from every subject stray from the background color.
    away = ~torus_dilate(every, 2)
    noise = ((frames - bg[:, :, None, None]).abs().mean(1) * away).flatten(1).sum(1) / away.flatten(1).sum(1).clamp_min(1)
    # Soft weights (the anti-aliased edge counts by how far it is from the background) give a
    # sub-pixel centre, so a shape moving at constant speed has a constant measured step.
    near = torus_dilate(main, 1)
    weight = (dist / dist.flatten(1).amax(1).clamp_min(1e-6)[:, None, None]) * near
    cx = _circular_mean(weight.sum(1), W)  # [T]
    cy = _circular_mean(weight.sum(2), H)  # [T]
    colors, shapes, fits = [], [], torch.full((T,), float("nan"))
    for t in range(T):
        if not present[t]:
            colors.append(None)
            shapes.append(None)
            continue
        core = main[t] & (dist[t] > 0.5 * dist[t][main[t]].max())
        mean = frames[t][:, core].mean(1)  # [3]
        colors.append(_COLOR_NAMES[int(torch.cdist(mean[None], _COLOR_TABLE).argmin())])
        if subjects[t] != 1:
            shapes.append(None)  # two subjects are not one shape
            continue
        # Centre the subject (it may wrap over a border), then read its outline.
        oy, ox = H // 2 - int(cy[t]), W // 2 - int(cx[t])
        contrast = float((mean - bg[t]).norm()) if core.any() else 1.0
        alpha = torch.roll((dist[t] / max(contrast, 1e-6)).clamp(0, 1) * near[t], (oy, ox), dims=(0, 1))
        name, err = _read_shape(alpha)
        shapes.append(name)
        fits[t] = err
    center = torch.stack([cx, cy], 1)  # [T, 2]
    center[~present] = float("nan")
    return FrameDetection(present, colors, shapes, background, center, area, W, subjects, noise, fits)


def _ray_crossing(values: Tensor) -> Tensor:
    """Distance along rays ``[..., R]`` sampled every :data:`_STEP` pixels where ``values``
    first falls below 1/2 (linear between samples; the ray's length if it never does)."""
    below = values < 0.5
    below[..., -1] = True
    k = below.float().argmax(-1).clamp_min(1)  # [...] first sample below
    v0 = values.gather(-1, (k - 1)[..., None])[..., 0]
    v1 = values.gather(-1, k[..., None])[..., 0]
    frac = ((v0 - 0.5) / (v0 - v1).clamp_min(1e-6)).clamp(0, 1)
    r = (k - 1 + frac) * _STEP
    return torch.where(values[..., 0] < 0.5, torch.zeros_like(r), r)


_TEMPLATES: dict[str, Tensor] = {}


def _template_profile(shape: str) -> Tensor:
    """The outline radius ``[_ANGLES]`` of a world shape of half size 1, from its signed distance."""
    if shape not in _TEMPLATES:
        theta = torch.arange(_ANGLES, dtype=torch.float64) * (2 * math.pi / _ANGLES)
        r = torch.arange(0, 2.5, 1e-3, dtype=torch.float64)
        dx, dy = r[None] * theta.cos()[:, None], r[None] * theta.sin()[:, None]  # [A, R]
        inside = _sdf(shape, dx, dy, torch.tensor(1.0, dtype=torch.float64)) < 0
        _TEMPLATES[shape] = (r[(~inside).double().argmax(1)]).float()
    return _TEMPLATES[shape]


def _read_shape(alpha: Tensor) -> tuple[str | None, float]:
    """The world shape whose outline matches the subject's (``alpha [H, W]``: 1 inside, 0 outside,
    the subject near the middle) within :data:`SHAPE_TOLERANCE`, and the outline error."""
    H, W = alpha.shape
    total = float(alpha.sum())
    if total < 1:
        return None, float("nan")
    ys = torch.arange(H, dtype=torch.float32) + 0.5
    xs = torch.arange(W, dtype=torch.float32) + 0.5
    cx = float((alpha.sum(0) * xs).sum()) / total  # area centroid: the centre of every world shape
    cy = float((alpha.sum(1) * ys).sum()) / total
    theta = torch.arange(_ANGLES, dtype=torch.float32) * (2 * math.pi / _ANGLES)
    r = torch.arange(0, min(H, W) / 2, _STEP)
    px = cx + r[None] * theta.cos()[:, None]  # [A, R] pixels
    py = cy + r[None] * theta.sin()[:, None]
    grid = torch.stack([px / W * 2 - 1, py / H * 2 - 1], -1)[None]  # [1, A, R, 2]
    values = torch.nn.functional.grid_sample(alpha[None, None], grid, align_corners=False)[0, 0]  # [A, R]
    outline = _ray_crossing(values)  # [A]
    best, name = float("inf"), None
    for shape in SHAPES:
        tmpl = _template_profile(shape)
        scale = float((outline * tmpl).sum() / (tmpl * tmpl).sum())
        if scale <= 0:
            continue
        err = float(((outline - scale * tmpl) ** 2).mean().sqrt()) / scale
        if err < best:
            best, name = err, shape
    tolerance = SHAPE_TOLERANCE * max(1.0, 64 / min(H, W))
    return (name if best <= tolerance else None), best


def strays(values: Sequence[str | None], old: str, new: str) -> int:
    """How many readings are neither ``old`` nor ``new``: the frames of a switch from one value to
    another that pass through a third (a red subject switched to blue that shows purple on the way).
    None (nothing read: no subject, or no shape template fits) is not counted."""
    return sum(v is not None and v not in (old, new) for v in values)


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
    speed: float = 0.0  # adherence: share of windows whose mean speed is within the world's range
    one_subject: float = 0.0  # share of frames with exactly one subject
    teleports: float = 0.0  # share of frame pairs whose subject jumps farther than TELEPORT x the top speed
    background_noise: float = 0.0  # the noisiest frame's background: mean absolute deviation, 0..1
    noisy_frames: float = 0.0  # share of frames whose background noise exceeds NOISY
    mean_speed: float = 0.0  # pixels per frame, frame pairs that both show a subject
    # Median outline error of the best-fitting world shape over the frames with exactly one subject
    # (a share of the half size; lower is better, SHAPE_TOLERANCE is where a reading counts). It
    # moves where the thresholded shape adherence does not; 1.0 where no frame has one subject.
    outline_error: float = 1.0
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
        sims.append(max(0.0, 0.5 * float(_cosine(crops[t], crops[0]) + _cosine(crops[t], crops[t - 1]))))
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
    lo, hi = (v * W / 64 for v in SPEED_RANGE)
    step_len = steps.norm(dim=1)  # [T-1], nan where a frame has no subject
    jumps = float((step_len[ok] > TELEPORT * hi).float().mean()) if ok.any() else 0.0
    # Dynamic degree: the subject's speed as a share of the world's top speed, capped at 1 and
    # averaged over frame pairs (a frame without a subject counts as still).
    dynamic = float((step_len.nan_to_num(0.0) / hi).clamp(max=1).mean())
    # Adherence per window.
    wins, hits = [], {"color": 0, "shape": 0, "direction": 0, "background": 0, "speed": 0}
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
        pace = float(st[okw].norm(dim=1).mean()) if okw.any() else 0.0
        for k in ("color", "shape", "direction", "background"):
            hits[k] += int(got[k] == getattr(want, k))
        hits["speed"] += int(lo * (1 - SPEED_SLACK) <= pace <= hi * (1 + SPEED_SLACK))
        wins.append({"want": want.caption, **got, "speed": round(pace, 3)})
    n = max(1, n_win)
    return VideoScores(
        subject_consistency=subject,
        background_consistency=background_consistency,
        temporal_flickering=flicker,
        motion_smoothness=smooth,
        dynamic_degree=dynamic,
        color=hits["color"] / n,
        shape=hits["shape"] / n,
        direction=hits["direction"] / n,
        background=hits["background"] / n,
        subject_present=float(det.present.float().mean()),
        brightness=float(frames.mean()),
        speed=hits["speed"] / n,
        one_subject=float((det.subjects == 1).float().mean()),
        teleports=jumps,
        background_noise=float(det.noise.max()),
        noisy_frames=float((det.noise > NOISY).float().mean()),
        mean_speed=float(speed),
        outline_error=float(det.fit.nanmedian().nan_to_num(1.0).clamp(max=1.0)),  # all nan: no frame read
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
