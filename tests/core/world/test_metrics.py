"""Metrics read the truth from rendered clips and fall when the video is wrong."""

import math

import pytest
import torch

from streamdit_core.world import BACKGROUNDS, COLORS, SHAPES, Scene, World
from streamdit_core.world import detect, score_video, summarize
from streamdit_core.world.metrics import strays

SCENE = Scene("purple", "triangle", "up-right", "white")


def _clip(scene=SCENE, frames=48, seed=0):
    return World().render(scene, frames, torch.Generator().manual_seed(seed)).frames


def test_true_video_scores_full_adherence_and_high_quality():
    s = score_video(_clip(), SCENE)
    assert (s.color, s.shape, s.direction, s.background, s.speed) == (1, 1, 1, 1, 1)
    assert (s.one_subject, s.teleports, s.noisy_frames) == (1, 0, 0) and s.background_noise < 1e-3
    assert s.subject_consistency > 0.95 and s.temporal_flickering > 0.99 and s.motion_smoothness > 0.9
    assert 1.25 <= s.mean_speed <= 2.0 and s.dynamic_degree == pytest.approx(s.mean_speed / 2.0, abs=1e-3)


@pytest.mark.parametrize("shape", SHAPES)
def test_world_shapes_read_exactly_at_every_size_and_across_borders(shape):
    gen = torch.Generator().manual_seed(7)
    for size, heading in ((64, "up-left"), (64, "right"), (32, "down"), (96, "down-right")):
        frames = World(size=size).render(Scene("orange", shape, heading, "gray"), 70, gen).frames  # wraps
        det = detect(frames)
        assert set(det.shape) == {shape} and (det.subjects == 1).all()
        s = score_video(frames, Scene("orange", shape, heading, "gray"))
        assert (s.one_subject, s.teleports) == (1, 0)


def _paint(sdf, fg="red", bg="white", frames=4):
    """A still frame of a shape given by a signed distance (pixels) around (30.3, 33.7)."""
    grid = torch.arange(64, dtype=torch.float32) + 0.5
    dx, dy = grid[None, :] - 30.3, grid[:, None] - 33.7
    alpha = (0.5 - sdf(dx.expand(64, 64), dy.expand(64, 64))).clamp(0, 1)
    f, b = torch.tensor(COLORS[fg])[:, None, None], torch.tensor(BACKGROUNDS[bg])[:, None, None]
    return (b + (f - b) * alpha)[None].expand(frames, -1, -1, -1).contiguous()


def _rounded_square(half, corner):
    def sdf(dx, dy):
        qx, qy = dx.abs() - (half - corner), dy.abs() - (half - corner)
        outside = torch.stack([qx.clamp_min(0), qy.clamp_min(0)]).norm(dim=0)
        return outside + torch.maximum(qx, qy).clamp_max(0) - corner
    return sdf


def _two_circles(dx, dy):  # radius 9, 30 pixels apart
    return torch.minimum(torch.sqrt((dx - 15) ** 2 + dy * dy), torch.sqrt((dx + 15) ** 2 + dy * dy)) - 9


def _star(dx, dy):
    angle = torch.atan2(dy, dx)
    return torch.sqrt(dx * dx + dy * dy) - (9 + 7 * (0.5 + 0.5 * torch.cos(5 * (angle + math.pi / 2))))


NOT_A_WORLD_SHAPE = {
    "square with 9-pixel round corners": _rounded_square(13.6, 9),
    "square with 10-pixel round corners": _rounded_square(13.6, 10),
    "wide ellipse": lambda dx, dy: torch.sqrt((dx / 16) ** 2 + (dy / 11) ** 2) * 13 - 13,
    "tall ellipse": lambda dx, dy: torch.sqrt((dx / 12) ** 2 + (dy / 15) ** 2) * 13 - 13,
    "hexagon": lambda dx, dy: torch.stack([math.cos(k * math.pi / 3) * dx + math.sin(k * math.pi / 3) * dy
                                           for k in range(6)]).amax(0) - 12.5,
    "square turned 45 degrees": lambda dx, dy: (dx.abs() + dy.abs()) / math.sqrt(2) - 11,
    "five-point star": _star,
    "4-pixel dot": lambda dx, dy: torch.maximum(dx.abs(), dy.abs()) - 1.0,
}


@pytest.mark.parametrize("name", NOT_A_WORLD_SHAPE)
def test_shapes_the_world_never_draws_read_as_none_and_count_as_wrong(name):
    frames = _paint(NOT_A_WORLD_SHAPE[name])
    assert detect(frames).shape == [None] * 4
    frames = frames[:1].expand(16, -1, -1, -1)
    assert all(score_video(frames, Scene("red", shape, "left", "white")).shape == 0 for shape in SHAPES)


def test_two_subjects_are_counted_and_read_as_no_shape():
    two = _paint(_two_circles)
    det = detect(two)
    assert det.subjects.tolist() == [2] * 4 and det.shape == [None] * 4
    one = detect(_paint(lambda dx, dy: torch.sqrt(dx * dx + dy * dy) - 9))
    assert one.subjects.tolist() == [1] * 4 and one.shape == ["circle"] * 4


def test_a_second_subject_and_a_teleport_fail_their_metrics():
    a = World().render(Scene("red", "circle", "right", "black"), 48, torch.Generator().manual_seed(3)).frames
    b = World().render(Scene("red", "square", "right", "black"), 48, torch.Generator().manual_seed(3)).frames
    far = torch.roll(b, (32, 32), dims=(2, 3))  # the same path, half the frame away
    two = torch.where((far - a[:, :, :1, :1]).abs().sum(1, keepdim=True) > 0.1, far, a)
    s = score_video(two, Scene("red", "circle", "right", "black"))
    assert s.one_subject < 0.1 and s.shape < 0.1
    jump = torch.cat([a[:24], torch.roll(a[24:], (0, 20), dims=(2, 3))])  # 20 pixels in one frame
    s = score_video(jump, Scene("red", "circle", "right", "black"))
    assert s.teleports == pytest.approx(1 / 47) and s.one_subject == 1
    assert score_video(a, Scene("red", "circle", "right", "black")).teleports == 0


def test_speed_and_dynamic_degree_tell_still_slow_normal_and_too_fast_apart():
    scene = Scene("green", "square", "up-right", "navy")
    read = {}
    for name, speed in (("still", 0.0), ("slow", 0.6), ("normal", 1.6), ("fast", 3.1)):
        frames = World(speed=(speed, speed)).render(scene, 48, torch.Generator().manual_seed(0)).frames
        read[name] = score_video(frames, scene)
    dyn = {k: v.dynamic_degree for k, v in read.items()}
    assert dyn["still"] == 0 and 0.25 <= dyn["slow"] <= 0.35 and 0.75 <= dyn["normal"] <= 0.85
    assert {k: v.speed for k, v in read.items()} == {"still": 0, "slow": 0, "normal": 1, "fast": 0}


def test_a_noisy_background_is_measured():
    frames = _clip()
    noisy = (frames + 0.06 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    s = score_video(noisy, SCENE)
    assert s.noisy_frames == 1 and s.background_noise > 0.03
    assert score_video(frames, SCENE).noisy_frames == 0


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


def test_outline_error_grows_as_a_shape_strays_from_the_world_and_reads_1_without_one_subject():
    assert score_video(_clip(), SCENE).outline_error < 0.015  # the world's own triangle, wraps included
    errors = [score_video(_paint(_rounded_square(13.6, r), frames=8), Scene("red", "square", "left", "white")).outline_error
              for r in (0.5, 4, 9)]
    assert errors[0] < 0.015 < errors[1] < errors[2]  # the rounder the corners, the larger the error
    two = _paint(_two_circles, frames=8)
    assert score_video(two, Scene("red", "circle", "left", "white")).outline_error == 1.0


def test_a_switch_that_shows_a_third_value_on_the_way_counts_its_stray_frames():
    red, blue = Scene("red", "circle", "right", "black"), Scene("blue", "circle", "right", "black")
    world, gen = World(), lambda: torch.Generator().manual_seed(2)
    cut = detect(world.render([(0, red), (16, blue)], 32, gen()).frames)
    assert cut.color == ["red"] * 16 + ["blue"] * 16 and strays(cut.color, "red", "blue") == 0
    via = detect(world.render([(0, red), (16, Scene("purple", "circle", "right", "black")), (18, blue)], 32,
                              gen()).frames)
    assert strays(via.color, "red", "blue") == 2 and strays(via.color, "red", "purple") == 14
    square = detect(world.render([(0, red), (16, Scene("red", "square", "right", "black")), (17, red)], 32,
                                 gen()).frames)
    assert strays(square.shape, "circle", "triangle") == 1
    assert strays([None, "red", None, "blue"], "red", "blue") == 0  # nothing read is not a third value
