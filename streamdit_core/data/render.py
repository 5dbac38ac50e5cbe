"""The synthetic world written out as a clip folder: mp4 files with sidecar captions, the layout
:class:`~streamdit_core.data.ClipFolder` reads. It is how the real-video path (``train --data``,
``--init wan:``) is exercised end to end on video whose content the world's metrics can score."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["render_world_folder"]


def render_world_folder(out: str | os.PathLike, videos: int, seconds: float = 3.0, seed: int = 0,
                        split: str = "train") -> Path:
    """Writes ``videos`` clips of the world's ``split`` scenes, ``seconds`` long at its 16 fps, as
    ``out/clip_00000.mp4`` with ``clip_00000.txt`` beside each. Deterministic for a seed."""
    from ..video import open_writer
    from ..world import FPS, World

    if videos < 1 or seconds <= 0:
        raise ValueError(f"need videos >= 1 and seconds > 0, got {videos} and {seconds}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world, gen = World(), torch.Generator().manual_seed(seed)
    frames = max(1, round(seconds * FPS))
    for i in range(videos):
        clip = world.render(world.sample_scene(gen, split), frames, gen)
        with open_writer(out / f"clip_{i:05d}.mp4", FPS) as writer:
            writer.write(clip.frames)
        (out / f"clip_{i:05d}.txt").write_text(clip.captions[0] + "\n", encoding="utf-8")
    return out
