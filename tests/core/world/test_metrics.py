"""Metrics read the truth from rendered clips and fall when the video is wrong."""

import pytest
import torch

from streamdit_core.world import Scene, World
from streamdit_core.world import detect, score_video, summarize

SCENE = Scene("purple", "triangle", "up-right", "white")


def _clip(scene=SCENE, frames=48, seed=0):
    return World().render(scene, frames, torch.Generator().manual_seed(seed)).frames


def test_true_video_scores_full_adherence_and_high_quality():
    s = score_video(_clip(), SCENE)
    assert (s.color, s.shape, s.direction, s.background, s.dynamic_degree) == (1, 1, 1, 1, 1)
    assert s.subject_consistency > 0.95 and s.temporal_flickering > 0.99 and s.motion_smoothness > 0.9


def test_each_wrong_attribute_is_caught():
    frames = _clip()
    for wrong in (Scene("red", "triangle", "up-right", "white"), Scene("purple", "square", "up-right", "white"),
                  Scene("purple", "triangle", "down-left", "white"), Scene("purple", "triangle", "up-right", "navy")):
        s = score_video(frames, wrong)
        changed = [k for k in ("color", "shape", "direction", "background") if getattr(wrong, k) != getattr(SCENE, k)]
        assert getattr(s, changed[0]) == 0
        assert all(getattr(s, k) == 1 for k in ("color", "shape", "direction", "background") if k not in changed)


def test_static_video_has_no_dynamic_degree_and_empty_video_no_subject():
    still = _clip()[:1].expand(32, -1, -1, -1)
    s = score_video(still, SCENE)
    assert s.dynamic_degree == 0 and s.direction == 0
    empty = torch.full((32, 3, 64, 64), 0.95)
    s = score_video(empty, SCENE)
    assert s.subject_present == 0 and s.color == 0 and s.shape == 0


def test_flicker_jitter_and_identity_changes_lower_their_scores():
    frames = _clip()
    base = score_video(frames, SCENE)
    noisy = frames.clone()
    noisy[::2] = (noisy[::2] + 0.08).clamp(0, 1)  # background brightness flickers
    assert score_video(noisy, SCENE).temporal_flickering < base.temporal_flickering - 0.03
    jitter = torch.stack([torch.roll(f, shifts=(3 * (i % 2), 0), dims=(1, 2)) for i, f in enumerate(frames)])
    assert score_video(jitter, SCENE).motion_smoothness < base.motion_smoothness - 0.2
    other = World().render(Scene("purple", "circle", "up-right", "white"), 48, torch.Generator().manual_seed(0)).frames
    swapped = torch.cat([frames[:24], other[24:]])
    assert score_video(swapped, SCENE).subject_consistency < base.subject_consistency - 0.02


def test_detection_follows_a_wrapping_shape():
    frames = World().render(Scene("yellow", "circle", "left", "black"), 100, torch.Generator().manual_seed(4)).frames
    det = detect(frames)
    assert det.present.all() and set(det.color) == {"yellow"} and set(det.shape) == {"circle"}


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"\[T, 3, H, W\]"):
        detect(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="one Scene per frame"):
        score_video(_clip(frames=8), [SCENE] * 3)
    with pytest.raises(ValueError, match="no videos"):
        summarize([])
