"""A procedural text-video world: a colored shape moving over a plain background.

Every scene is four attributes (color, shape, direction, background) and a caption from one
grammar: ``"a red circle moving left on a black background"``. A clip is rendered from a
*script*: a list of ``(frame, Scene)`` segments, so a caption can change mid-clip (the color, the
shape, the heading or the background), which is what prompt-switch training and evaluation need.

Borders, two rules:

- ``"wrap"``: the shape leaves one side and comes back on the other, so its heading and caption
  stay true for ever. Training clips use this rule: a constant caption describes every frame.
- ``"bounce"``: the shape reflects off the borders. The heading then changes, so the world
  changes the caption at every bounce (a natural direction switch), keeping each frame's caption
  true to its pixels.

Rendering is anti-aliased from signed distances, so the shape moves by fractions of a pixel and
nothing flickers. Frames are ``[T, 3, H, W]`` float in ``0..1`` at 16 fps.

Sizes (at 64x64; they scale with the frame): half sizes 12-16 pixels, so a shape is 24-37 pixels
across, and speeds of 1.25-2 pixels per frame. With smaller shapes (half size 8-11) what tells a
triangle from a circle is a few edge pixels, which an 8x latent codec keeps but a small StreamDiT
trained for an hour on a CPU did not learn to draw from the caption (see the model card).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "DIRECTIONS",
    "FPS",
    "SHAPES",
    "SPEED_RANGE",
    "SWITCH_KINDS",
    "VOCABULARY",
    "Clip",
    "Scene",
    "World",
    "all_scenes",
    "check_switch_kinds",
    "held_out_scenes",
    "stratified",
    "parse_caption",
]

FPS = 16

# Shape colors, RGB in 0..1. Chosen far apart in RGB so a detector can name them from pixels.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.15, 0.30, 1.00),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "orange": (1.00, 0.55, 0.05),
}
# Backgrounds come from their own palette so a shape never disappears into its background.
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.05, 0.05, 0.05),
    "white": (0.95, 0.95, 0.95),
    "gray": (0.50, 0.50, 0.50),
    "navy": (0.05, 0.07, 0.30),
}
SHAPES = ("circle", "square", "triangle")
SPEED_RANGE = (1.25, 2.0)  # pixels per frame at 64x64 (scaled with the frame)
# What changes in a switch clip (World.switch_batch): an attribute; "appear": the subject
# appears, at a random frame, in a clip whose earlier frames showed only its background; or
# "recover": only the clip's first two latent frames (where a buffer's K = 2 reference frames sit)
# lack the subject.
SWITCH_KINDS = ("color", "shape", "direction", "background", "appear", "recover")
_BLANK_KINDS = ("appear", "recover")  # the kinds whose frames before the change show only the background


def check_switch_kinds(kinds: Sequence[str], name: str = "kinds") -> tuple[str, ...]:
    """``kinds`` as a tuple, or a ValueError naming ``name`` when it is empty or not some of
    :data:`SWITCH_KINDS`."""
    if not kinds or set(kinds) - set(SWITCH_KINDS):
        raise ValueError(f"{name} must be some of {', '.join(SWITCH_KINDS)}, got {list(kinds)}")
    return tuple(kinds)


# Unit headings in image coordinates (x right, y down).
_S = math.sqrt(0.5)
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-_S, -_S),
    "up-right": (_S, -_S),
    "down-left": (-_S, _S),
    "down-right": (_S, _S),
}

# Every word a caption of this world uses: a model trained on it knows these and no others.
VOCABULARY = frozenset({"a", "moving", "on", "background", *COLORS, *SHAPES, *DIRECTIONS, *BACKGROUNDS})

_HELD_OUT_FILE = Path(__file__).with_name("held_out.json")


@dataclass(frozen=True)
class Scene:
    """One caption's worth of attributes."""

    color: str
    shape: str
    direction: str
    background: str

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("color", self.color, COLORS),
            ("shape", self.shape, SHAPES),
            ("direction", self.direction, DIRECTIONS),
            ("background", self.background, BACKGROUNDS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape} moving {self.direction} on a {self.background} background"

    def key(self) -> tuple[str, str, str, str]:
        return (self.color, self.shape, self.direction, self.background)


def parse_caption(caption: str) -> Scene:
    """Inverse of :attr:`Scene.caption` (raises ValueError naming the caption otherwise)."""
    words = caption.strip().lower().split()
    if len(words) != 9 or words[0] != "a" or words[3] != "moving" or words[5:7] != ["on", "a"] or words[8] != "background":
        raise ValueError(
            f"caption {caption!r} does not follow 'a <color> <shape> moving <direction> on a <background> background'"
        )
    return Scene(words[1], words[2], words[4], words[7])


def all_scenes() -> list[Scene]:
    """Every attribute combination, in a fixed order."""
    return [Scene(*k) for k in itertools.product(COLORS, SHAPES, DIRECTIONS, BACKGROUNDS)]


def held_out_scenes(count: int | None = None) -> list[Scene]:
    """The combinations never used in training (``held_out.json``, kept in the repository).

    With ``count``, a subset of that many, stratified over the attributes (see :func:`stratified`).
    """
    data = json.loads(_HELD_OUT_FILE.read_text())
    scenes = [Scene(*k) for k in data["held_out"]]
    return scenes if count is None else stratified(scenes, count)


def stratified(scenes: Sequence[Scene], count: int) -> list[Scene]:
    """``count`` of ``scenes``, chosen so that every value of every attribute appears as evenly as
    the pool allows: each pick is the scene whose values are the least used so far (ties: the
    first in order). Deterministic; the first ``k`` picks of a longer subset are the subset of k."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    left = list(scenes)
    used: dict[tuple[str, str], int] = {}
    out: list[Scene] = []
    attrs = ("color", "shape", "direction", "background")
    while left and len(out) < count:
        def cost(scene: Scene) -> tuple[int, int]:
            counts = [used.get((a, getattr(scene, a)), 0) for a in attrs]
            return max(counts), sum(counts)
        best = min(left, key=cost)
        left.remove(best)
        out.append(best)
        for a in attrs:
            used[(a, getattr(best, a))] = used.get((a, getattr(best, a)), 0) + 1
    return out


@dataclass
class Clip:
    """A rendered clip.

    Attributes:
        frames: ``[T, 3, H, W]`` float in 0..1.
        scenes: the scene each frame shows (length T).
        centers: ``[T, 2]`` shape center (x, y) in pixels.
    """

    frames: Tensor
    scenes: list[Scene]
    centers: Tensor

    @property
    def captions(self) -> list[str]:
        return [s.caption for s in self.scenes]


def _sdf(shape: str, dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    """Signed distance (pixels, negative inside) of a shape of half size ``r`` centred at 0."""
    if shape == "circle":
        return torch.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) - 0.85 * r  # same area-ish as the circle's
    # Upward triangle inscribed in the circle of radius 1.15 r: three half-planes.
    R = 1.15 * r
    edges = []
    for angle in (90.0, 210.0, 330.0):  # outward normals of the three sides
        a = math.radians(angle)
        nx, ny = math.cos(a), -math.sin(a)
        # the sides sit at distance R/2 from the centre along -normal of each vertex direction
        edges.append(-(nx * dx + ny * dy) - R / 2)
    return torch.stack(edges).amax(0)


class World:
    """Renders scripted clips. Deterministic: a seed (a ``torch.Generator``) fixes everything.

    Args:
        size: frame height = width in pixels (at least 32).
        speed: range of speeds in pixels per frame.
        radius: range of shape half sizes in pixels.
    """

    def __init__(self, size: int = 64, speed: tuple[float, float] = SPEED_RANGE,
                 radius: tuple[float, float] = (12.0, 16.0)):
        if size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {size}")
        self.size = size
        self.speed = speed
        self.radius = radius
        scale = size / 64
        self._radius = (radius[0] * scale, radius[1] * scale)
        self._speed = (speed[0] * scale, speed[1] * scale)
        held = set(s.key() for s in held_out_scenes())
        self.train_scenes = [s for s in all_scenes() if s.key() not in held]
        self.held_out = [s for s in all_scenes() if s.key() in held]

    def sample_scene(self, gen: torch.Generator, split: str = "train") -> Scene:
        """A random scene from ``split`` ("train" or "held_out")."""
        pool = {"train": self.train_scenes, "held_out": self.held_out}.get(split)
        if pool is None:
            raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
        return pool[int(torch.randint(len(pool), (1,), generator=gen))]

    def render(self, script: Sequence[tuple[int, Scene]] | Scene, frames: int, gen: torch.Generator,
               border: str = "wrap") -> Clip:
        """Render ``frames`` frames of a script.

        Args:
            script: a Scene, or ``[(start_frame, Scene), ...]`` with the first start at 0 and
                starts increasing. Position, speed and size carry over across a switch.
            frames: number of frames T.
            gen: CPU generator; the same generator state gives the same clip.
            border: "wrap" or "bounce" (see the module note).
        """
        if isinstance(script, Scene):
            script = [(0, script)]
        script = list(script)
        if not script or script[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(script, script[1:])):
            raise ValueError(f"script starts must begin at 0 and increase, got {[s for s, _ in script]}")
        if border not in ("wrap", "bounce"):
            raise ValueError(f"border must be 'wrap' or 'bounce', got {border!r}")
        if frames < 1:
            raise ValueError(f"frames must be at least 1, got {frames}")
        u = torch.rand(4, generator=gen, dtype=torch.float64)
        r = self._radius[0] + (self._radius[1] - self._radius[0]) * float(u[0])
        speed = self._speed[0] + (self._speed[1] - self._speed[0]) * float(u[1])
        lo, hi = r + 1, self.size - r - 1
        pos = [lo + (hi - lo) * float(u[2]), lo + (hi - lo) * float(u[3])]
        # Per frame: the scene in force, the heading (which bounces may flip) and the centre.
        scenes, centers = [], []
        seg = 0
        heading = list(DIRECTIONS[script[0][1].direction])
        for t in range(frames):
            if seg + 1 < len(script) and t >= script[seg + 1][0]:
                seg += 1
                heading = list(DIRECTIONS[script[seg][1].direction])
            scene = script[seg][1]
            if t > 0:
                for a in range(2):
                    pos[a] += heading[a] * speed
                    if border == "wrap":
                        pos[a] %= self.size
                    elif pos[a] < lo or pos[a] > hi:
                        pos[a] = 2 * lo - pos[a] if pos[a] < lo else 2 * hi - pos[a]
                        heading[a] = -heading[a]
            if border == "bounce":
                scene = replace(scene, direction=_direction_name(heading))
            scenes.append(scene)
            centers.append(tuple(pos))
        centers_t = torch.tensor(centers, dtype=torch.float32)  # [T, 2]
        return Clip(self._draw(scenes, centers_t, r), scenes, centers_t)

    def _draw(self, scenes: list[Scene], centers: Tensor, r: float) -> Tensor:
        T, S = len(scenes), self.size
        grid = torch.arange(S, dtype=torch.float32) + 0.5
        out = torch.empty(T, 3, S, S)
        rr = torch.tensor(r)
        for t, scene in enumerate(scenes):
            cx, cy = float(centers[t, 0]), float(centers[t, 1])
            # Offsets on the torus: a wrapping shape is drawn on both sides of the border.
            dx = torch.remainder(grid[None, :] - cx + S / 2, S) - S / 2  # [1, W]
            dy = torch.remainder(grid[:, None] - cy + S / 2, S) - S / 2  # [H, 1]
            dist = _sdf(scene.shape, dx, dy, rr)  # [H, W]
            alpha = (0.5 - dist).clamp(0, 1)  # [H, W] one-pixel anti-aliased edge
            fg = torch.tensor(COLORS[scene.color])[:, None, None]
            bg = torch.tensor(BACKGROUNDS[scene.background])[:, None, None]
            out[t] = bg + (fg - bg) * alpha
        return out

    def batch(self, count: int, frames: int, gen: torch.Generator, split: str = "train") -> tuple[Tensor, list[str]]:
        """``count`` constant-caption wrap clips: frames ``[count, T, 3, H, W]`` and captions."""
        clips = [self.render(self.sample_scene(gen, split), frames, gen) for _ in range(count)]
        return torch.stack([c.frames for c in clips]), [c.captions[0] for c in clips]

    def switch_batch(self, count: int, frames: int, gen: torch.Generator, at: int | None = None,
                     every: int = 1, kinds: Sequence[str] = SWITCH_KINDS[:4]
                     ) -> tuple[Tensor, list[list[tuple[int, Scene]]]]:
        """``count`` wrap clips of the training split in which something changes once.

        The kinds of change take turns: an attribute (color, shape, direction, background) changes
        to another value, or, for "appear", the scene stays and the frames before the change show
        only its background (the subject appears where it would have been). "recover" is "appear"
        with the change at the third latent frame (frame ``2 * every``, or ``every`` in a clip too
        short for it), whatever ``at`` says: only the first two latent frames, the reference frames
        of a K = 2 buffer, lack the subject, so every frame after them shows the subject under its
        caption and no window teaches the model to leave a noisy frame without the subject its
        caption names. Both scenes of each
        script are training scenes. The change comes at frame ``at``, or, with ``at`` None, at a
        multiple of ``every`` drawn uniformly from ``every .. frames - every`` (so a codec with a
        time factor ``every`` sees it on a latent frame's boundary). Returns frames
        ``[count, T, 3, H, W]`` and each clip's script ``[(0, first), (start, second)]``.
        """
        if frames < 2 * every:
            raise ValueError(f"a switch clip needs at least {2 * every} frames (one step of {every} "
                             f"before and after the change), got {frames}")
        if at is not None and not 0 < at < frames:
            raise ValueError(f"at must fall inside the clip (1..{frames - 1}), got {at}")
        kinds = check_switch_kinds(kinds)
        train = set(self.train_scenes)
        videos, scripts = [], []
        while len(scripts) < count:
            start = at if at is not None else every * int(torch.randint(1, frames // every, (1,), generator=gen))
            kind, first = kinds[len(scripts) % len(kinds)], self.sample_scene(gen)
            if kind == "recover":  # its start is fixed; the draw above still runs, so other kinds' clips stay the same
                start = 2 * every if frames >= 3 * every else every
            if kind in _BLANK_KINDS:
                script = [(0, first), (start, first)]
            else:
                script = self.switch_script(gen, first, kind, start)
            if script[1][1] in train:
                clip = self.render(script, frames, gen).frames
                if kind in _BLANK_KINDS:
                    clip[:start] = torch.tensor(BACKGROUNDS[first.background])[:, None, None]
                videos.append(clip)
                scripts.append(script)
        return torch.stack(videos), scripts

    def switch_script(self, gen: torch.Generator, first: Scene, attribute: str, at: int,
                      split: str = "held_out") -> list[tuple[int, Scene]]:
        """A two-segment script where only ``attribute`` changes at frame ``at``."""
        options = {"color": COLORS, "shape": SHAPES, "direction": DIRECTIONS, "background": BACKGROUNDS}
        if attribute not in options:
            raise ValueError(f"attribute must be one of {', '.join(options)}, got {attribute!r}")
        choices = [v for v in options[attribute] if v != getattr(first, attribute)]
        second = replace(first, **{attribute: choices[int(torch.randint(len(choices), (1,), generator=gen))]})
        return [(0, first), (at, second)]


def _direction_name(heading: Iterable[float]) -> str:
    hx, hy = heading
    best = max(DIRECTIONS.items(), key=lambda kv: kv[1][0] * hx + kv[1][1] * hy)
    return best[0]
