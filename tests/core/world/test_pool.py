"""The latent pool: encoded clips, random crops, and the subject cover that weights the loss."""

import pytest
import torch

from streamdit_core.codec import PixelCodec
from streamdit_core.world import World
from streamdit_core.world import LatentPool, subject_cover
from streamdit_core.world import SWITCH_KINDS, Scene, detect, parse_caption


def test_subject_cover_is_where_the_shape_is_at_latent_resolution():
    world = World()
    clip = world.render(Scene("red", "square", "right", "black"), 4, torch.Generator().manual_seed(0))
    cover = subject_cover(clip.frames[None], time_factor=2, space_factor=8)
    assert cover.shape == (1, 1, 2, 8, 8)
    assert 0 <= float(cover.min()) and float(cover.max()) <= 1
    # The latent pixel holding the centre of the shape is fully covered; the farthest corner of
    # the torus from it is not covered at all.
    cx, cy = clip.centers[0].tolist()
    i, j = int(cy // 8), int(cx // 8)
    assert float(cover[0, 0, 0, i, j]) == 1.0
    assert float(cover[0, 0, 0, (i + 4) % 8, (j + 4) % 8]) == 0.0
    # Covered area grows with the margin and matches the rendered area without it.
    area = float(cover[0, 0, 0].sum()) * 64
    bare = float(subject_cover(clip.frames[None], 1, 8, margin=0)[0, 0, 0].sum()) * 64
    drawn = float(((clip.frames[0] - clip.frames[0].flatten(1).median(1).values[:, None, None]).norm(dim=0) > 0.1).sum())
    assert bare == drawn and area > bare


def test_pool_crops_carry_the_cover_of_their_own_frames():
    pool = LatentPool(World(size=32), PixelCodec(), clips=4, frames=3, clip_frames=6, seed=0, progress=False)
    batch = pool.sample(5, torch.Generator().manual_seed(1))
    assert batch.latents.shape == (5, 3, 3, 32, 32) and batch.subject.shape == (5, 1, 3, 32, 32)
    # With the pixel codec the cover is the subject mask grown by two pixels: every pixel
    # away from the background is covered.
    away = (batch.latents - batch.latents.flatten(3).median(3).values[..., None, None]).norm(dim=1) > 0.2
    assert bool((batch.subject[:, 0][away] > 0).all())
    assert float(batch.subject.mean()) < 0.5


def _window_source(pool, window):
    """(clip, start) of a sampled window, found by its latents."""
    for i in range(len(pool)):
        for s in range(pool.latents.shape[2] - pool.frames + 1):
            if torch.equal(pool.latents[i, :, s:s + pool.frames], window):
                return i, s
    raise AssertionError("a sampled window that is in no clip")


def test_switch_clips_are_captioned_by_the_newest_frame_of_each_window(tmp_path):
    world, codec = World(), PixelCodec()
    pool = LatentPool(world, codec, clips=10, frames=3, clip_frames=6, seed=0, progress=False, encode_batch=10,
                      switch_share=0.5, switch_kinds=SWITCH_KINDS, cache=tmp_path / "latents", cache_key="world")
    changed = [i for i, (_, caption) in enumerate(pool.switches) if caption]
    assert len(changed) == 4 and all(1 <= pool.switches[i][0] <= 5 for i in changed)
    # the fifth switch clip is an appearing subject: it keeps its caption, and its first frame is empty
    assert not bool(detect(codec.decode(pool.latents[9]).transpose(0, 1)).present[0])
    batch = pool.sample(48, torch.Generator().manual_seed(2))
    across = blank = 0
    for window, caption, switched, row in zip(batch.latents, batch.prompts, batch.switched.tolist(),
                                              batch.frame_prompts):
        clip, start = _window_source(pool, window)
        det = detect(codec.decode(window).transpose(0, 1))  # [F, 3, H, W]
        scene = parse_caption(caption)
        # the caption says what the newest frame (the input end) shows
        assert (det.color[-1], det.shape[-1], det.background[-1]) == (scene.color, scene.shape, scene.background)
        # frame by frame, each caption says what its own frame shows
        assert len(row) == pool.frames and row[-1] == caption
        for f, frame_caption in enumerate(row):
            said = parse_caption(frame_caption)
            assert det.background[f] == said.background
            if det.present[f]:
                assert (det.color[f], det.shape[f]) == (said.color, said.shape)
        assert (len(set(row)) > 1) == (start < pool.switches[clip][0] <= start + pool.frames - 1)
        at, second = pool.switches[clip]
        holds_change = start < at <= start + pool.frames - 1
        if holds_change:  # the window holds the change: its older frames do not
            across += 1
            assert caption == second and caption != pool.prompts[clip]
        missing = not bool(det.present.all())
        blank += missing
        # marked as a switch window exactly when it shows the change or a frame without its subject
        assert switched == (holds_change or missing)
    assert across >= 3 and blank >= 1
    again = LatentPool(world, codec, clips=10, frames=3, clip_frames=6, seed=0, progress=False, encode_batch=10,
                       switch_share=0.5, switch_kinds=SWITCH_KINDS, cache=tmp_path / "latents", cache_key="world")
    assert again.switches == pool.switches and torch.equal(again.latents, pool.latents)
    plain = LatentPool(world, codec, clips=10, frames=3, clip_frames=6, seed=0, progress=False, encode_batch=10,
                       cache=tmp_path / "latents", cache_key="world")
    assert not any(caption for _, caption in plain.switches)  # made again, not read from the switch pool
    assert not plain.sample(16, torch.Generator().manual_seed(2)).switched.any()


def test_switch_clips_need_a_source_that_renders_them():
    class Folder:  # a clip source without scripted switches, like a folder of videos
        def batch(self, n, frames, gen):
            return torch.rand(n, frames, 3, 32, 32, generator=gen), ["a clip"] * n

    with pytest.raises(ValueError, match="switch_share=0.5 needs clips rendered with a prompt switch"):
        LatentPool(Folder(), PixelCodec(), clips=2, frames=2, clip_frames=4, progress=False, switch_share=0.5)
    with pytest.raises(ValueError, match="switch_kinds must be some of color, shape"):
        LatentPool(World(size=32), PixelCodec(), clips=2, frames=2, clip_frames=4, progress=False, switch_share=0.5,
                   switch_kinds=("colour",))
    with pytest.raises(ValueError, match="switch_share must be in 0..1"):
        LatentPool(World(size=32), PixelCodec(), clips=2, frames=2, clip_frames=4, progress=False, switch_share=2)
