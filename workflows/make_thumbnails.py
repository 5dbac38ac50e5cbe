"""Draws ``<workflow>.jpg`` beside each example workflow from the workflow's own output: the graph
is run on the embedded model (as the tests run it) and frames of the video it makes are laid out
in a strip. The Wan graph needs model files this script cannot fetch; its card says so.

    python workflows/make_thumbnails.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from nodes import host, node_classes  # noqa: E402
from streamdit_core import read_video  # noqa: E402
from workflow_tools import EMBEDDED_WORKFLOWS, WORKFLOWS, load, object_info, run_prompt, to_api  # noqa: E402

WIDTH, HEIGHT, FRAMES = 512, 256, 4  # the template browser's card: 2:1, four frames of the video


class _CreateVideo:
    def run(self, images, fps, audio=None):
        return (images,)


class _SaveVideo:
    made: list = []

    def run(self, video, filename_prefix, format, codec):
        _SaveVideo.made.append(video)
        return ()


def _strip(video: torch.Tensor) -> Image.Image:
    """``[T, H, W, 3]`` frames -> FRAMES of them, evenly spaced, side by side, pixels kept sharp."""
    picks = torch.linspace(0, video.shape[0] - 1, FRAMES).round().long()
    cell = WIDTH // FRAMES
    card = Image.new("RGB", (WIDTH, HEIGHT), (17, 17, 17))
    for i, t in enumerate(picks.tolist()):
        frame = (video[t].clamp(0, 1) * 255).to(torch.uint8).numpy()
        image = Image.fromarray(frame).resize((cell - 4, cell - 4), Image.NEAREST)
        card.paste(image, (i * cell + 2, (HEIGHT - cell) // 2 + 2))
    return card


def main() -> None:
    info = object_info(node_classes())
    out = ROOT / "workflows" / ".thumbnail-output"
    host.set_output_directory(out)
    try:
        for path in EMBEDDED_WORKFLOWS:
            _SaveVideo.made.clear()
            run_prompt(to_api(load(path), info), {"StreamDiTLive": {"max_seconds": 4.0}},
                       {**node_classes(), "CreateVideo": _CreateVideo, "SaveVideo": _SaveVideo})
            videos = list(_SaveVideo.made) or [read_video(p).permute(0, 2, 3, 1) for p in sorted(out.rglob("*.mp4"))]
            _strip(torch.cat(videos)).save(path.with_suffix(".jpg"), quality=90)
            print(f"{path.with_suffix('.jpg').name}: {sum(v.shape[0] for v in videos)} frames")
    finally:
        host.set_output_directory(None)
        for f in sorted(out.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        if out.exists():
            out.rmdir()
    for path in WORKFLOWS:
        if path not in EMBEDDED_WORKFLOWS:
            card = Image.new("RGB", (WIDTH, HEIGHT), (17, 17, 17))
            ImageDraw.Draw(card).multiline_text((24, 90), f"{path.stem}\nneeds the Wan 2.1 model files:\nsee the "
                                                "loaders' titles", fill=(220, 220, 220), spacing=8)
            card.save(path.with_suffix(".jpg"), quality=90)
            print(f"{path.with_suffix('.jpg').name}: a card (no output without the model files)")


if __name__ == "__main__":
    main()
