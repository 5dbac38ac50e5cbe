"""The synthetic text-video world: what the embedded model is trained, tested and scored on.

- ``scenes``: the world itself: a colored shape moving over a plain background, captions from
  one grammar, clips rendered from scripts (:class:`World`, :class:`Scene`), and the held-out
  combinations never used in training.
- ``pool``: training latents, rendered and encoded up front (:class:`LatentPool`).
- ``metrics``: VBench-style scores and prompt adherence read off the pixels (:func:`detect`,
  :func:`score_video`).
- ``evaluate``: the protocols on the held-out combinations (inference schemes, drift, prompt
  switches, seams), as ``python -m streamdit_core evaluate`` runs them.
"""

from .metrics import FrameDetection, VideoScores, detect, score_video, summarize
from .pool import LatentBatch, LatentPool, subject_cover
from .scenes import (BACKGROUNDS, COLORS, DIRECTIONS, FPS, SHAPES, SWITCH_KINDS, VOCABULARY, Clip, Scene, World,
                     all_scenes, held_out_scenes, parse_caption, stratified)

__all__ = ["BACKGROUNDS", "COLORS", "DIRECTIONS", "FPS", "SHAPES", "SWITCH_KINDS", "VOCABULARY", "Clip", "FrameDetection",
           "LatentBatch", "LatentPool", "Scene", "VideoScores", "World", "all_scenes", "detect", "held_out_scenes", "parse_caption",
           "score_video", "stratified", "subject_cover", "summarize"]
