"""The latent pool: encoded clips, random crops, and the subject cover that weights the loss."""

import torch

from streamdit_core.codec import PixelCodec
from streamdit_core.world import World
from streamdit_core.world import LatentPool, subject_cover
from streamdit_core.world import Scene


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
