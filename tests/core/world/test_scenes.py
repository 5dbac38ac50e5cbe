"""The synthetic world: deterministic, captions true to pixels, held-out split kept apart."""

import itertools

import pytest
import torch

from streamdit_core.world import COLORS, DIRECTIONS, SHAPES, BACKGROUNDS, Scene, World, all_scenes, held_out_scenes, parse_caption
from streamdit_core.world import detect, score_video


def test_same_seed_same_clip_and_different_seed_different_clip():
    w = World()
    a = w.batch(4, 12, torch.Generator().manual_seed(7))
    b = w.batch(4, 12, torch.Generator().manual_seed(7))
    c = w.batch(4, 12, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (4, 12, 3, 64, 64) and 0 <= a[0].min() and a[0].max() <= 1


def test_captions_match_pixels_for_every_training_scene_sample():
    """A detector that knows only the palette reads back every attribute of random clips."""
    w = World()
    gen = torch.Generator().manual_seed(0)
    for _ in range(24):
        scene = w.sample_scene(gen)
        clip = w.render(scene, 32, gen)
        s = score_video(clip.frames, scene)
        assert (s.color, s.shape, s.direction, s.background) == (1, 1, 1, 1), (scene, s.windows)


def test_the_shape_moves_along_its_heading_at_constant_speed_and_wraps():
    w = World()
    clip = w.render(Scene("red", "square", "right", "black"), 80, torch.Generator().manual_seed(1))
    step = torch.remainder(clip.centers[1:] - clip.centers[:-1] + 32, 64) - 32  # [T-1, 2]
    assert torch.allclose(step[:, 1], torch.zeros(79), atol=1e-5)
    assert torch.allclose(step[:, 0], step[0, 0].expand(79), atol=1e-4) and step[0, 0] > 0.9
    assert (clip.centers[:, 0] < 64).all()  # wrapped, not off screen
    det = detect(clip.frames)
    assert det.present.all()


def test_bounce_reflects_and_the_caption_follows_the_heading():
    w = World()
    clip = w.render(Scene("blue", "circle", "left", "white"), 120, torch.Generator().manual_seed(2), border="bounce")
    directions = [s.direction for s in clip.scenes]
    assert "left" in directions and "right" in directions  # it bounced at least once
    x = clip.centers[:, 0]
    moving_right = torch.tensor([d == "right" for d in directions[1:]])
    dx = x[1:] - x[:-1]
    assert ((dx > 0) == moving_right).float().mean() > 0.95  # each caption is true to its frames
    s = score_video(clip.frames, clip.scenes)
    assert s.color == 1 and s.shape == 1


def test_a_scripted_switch_changes_only_the_named_attribute():
    w = World()
    gen = torch.Generator().manual_seed(3)
    first = Scene("green", "triangle", "down", "gray")
    script = w.switch_script(gen, first, "color", 16)
    clip = w.render(script, 32, gen)
    det = detect(clip.frames)
    assert set(det.color[:16]) == {"green"} and set(det.color[16:]) == {script[1][1].color} != {"green"}
    assert set(det.shape) == {"triangle"}


def test_held_out_split_is_at_least_15_percent_and_never_sampled_for_training():
    held = {s.key() for s in held_out_scenes()}
    total = len(COLORS) * len(SHAPES) * len(DIRECTIONS) * len(BACKGROUNDS)
    assert len(all_scenes()) == total and len(held) / total >= 0.15
    w = World()
    gen = torch.Generator().manual_seed(0)
    assert all(w.sample_scene(gen).key() not in held for _ in range(2000))
    train = [s.key() for s in w.train_scenes]
    for i, j in itertools.combinations(range(4), 2):  # every attribute pair is still seen in training
        assert {(k[i], k[j]) for k in train} == {(k[i], k[j]) for k in held | set(train)}


def test_captions_round_trip_and_bad_input_is_named():
    for s in all_scenes()[::37]:
        assert parse_caption(s.caption) == s
    with pytest.raises(ValueError, match="unknown color 'pink'"):
        Scene("pink", "circle", "left", "black")
    with pytest.raises(ValueError, match="does not follow"):
        parse_caption("a red circle")
    with pytest.raises(ValueError, match="starts must begin at 0"):
        World().render([(3, Scene("red", "circle", "left", "black"))], 8, torch.Generator())


def test_held_out_subsets_are_stratified_over_every_attribute():
    from collections import Counter

    from streamdit_core.world import COLORS, DIRECTIONS, SHAPES, held_out_scenes, stratified

    every = held_out_scenes()
    for n in (8, 16, 24):
        subset = held_out_scenes(n)
        assert len(subset) == n == len(set(subset)) and set(subset) <= set(every)
        for attr, values in (("color", COLORS), ("shape", SHAPES), ("direction", DIRECTIONS)):
            counts = Counter(getattr(s, attr) for s in subset)
            if n >= len(values):
                assert set(counts) == set(values)  # every value shows up
            assert max(counts.values()) - min(counts.values()) <= 2
    assert held_out_scenes(16)[:8] == held_out_scenes(8)  # a longer subset extends a shorter one
    assert sum(s.color == "blue" for s in held_out_scenes(16)) <= 3  # the first 16 in file order hold 13
    with pytest.raises(ValueError, match="count must be at least 1"):
        stratified(every, 0)


def test_switch_batch_changes_one_attribute_once_on_a_step_between_training_scenes():
    w = World()
    video, scripts = w.switch_batch(4, 8, torch.Generator().manual_seed(5), every=2)
    assert video.shape == (4, 8, 3, 64, 64) and len(scripts) == 4
    train = set(w.train_scenes)
    for k, ((start, first), (at, second)) in enumerate(scripts):
        assert start == 0 and at in (2, 4, 6) and first in train and second in train
        attribute = ("color", "shape", "direction", "background")[k]  # the attributes take turns
        assert [a for a in ("color", "shape", "direction", "background")
                if getattr(first, a) != getattr(second, a)] == [attribute]
        if attribute != "direction":  # a heading shows over frames, the rest in each frame
            read = getattr(detect(video[k]), attribute)
            assert set(read[:at]) == {getattr(first, attribute)} and set(read[at:]) == {getattr(second, attribute)}
    fixed, scripts = w.switch_batch(2, 8, torch.Generator().manual_seed(5), at=3)
    assert [s[1][0] for s in scripts] == [3, 3]
    with pytest.raises(ValueError, match="at least 4 frames"):
        w.switch_batch(1, 3, torch.Generator(), every=2)
    with pytest.raises(ValueError, match="inside the clip"):
        w.switch_batch(1, 8, torch.Generator(), at=8)
    video, scripts = w.switch_batch(2, 6, torch.Generator().manual_seed(1), at=2, kinds=("appear",))
    for clip, ((_, first), (_, second)) in zip(video, scripts):  # the subject appears where it would have been
        assert first == second and detect(clip).present.tolist() == [False, False, True, True, True, True]
        assert torch.equal(clip[0], torch.tensor(BACKGROUNDS[first.background])[:, None, None].expand(3, 64, 64))
    # "recover": whatever at says, only the first two latent frames (the K = 2 references) lack the subject
    for frames, every, at, present in ((8, 1, 5, [False] * 2 + [True] * 6), (8, 2, None, [False] * 4 + [True] * 4),
                                       (4, 2, None, [False] * 2 + [True] * 2)):
        video, scripts = w.switch_batch(3, frames, torch.Generator().manual_seed(2), at=at, every=every,
                                        kinds=("recover", "color"))
        assert scripts[0][0][1] == scripts[0][1][1] and scripts[2][0][1] == scripts[2][1][1]
        assert scripts[1][0][1].color != scripts[1][1][1].color
        for k in (0, 2):
            assert detect(video[k]).present.tolist() == present
    with pytest.raises(ValueError, match="kinds must be some of"):
        w.switch_batch(1, 8, torch.Generator(), kinds=("colour",))
