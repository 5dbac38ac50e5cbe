"""Training batches from the world: clips rendered once, encoded once, cropped at random."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .world import World

__all__ = ["LatentBatch", "LatentPool"]


@dataclass(frozen=True)
class LatentBatch:
    """latents ``[b, C, F, h, w]`` and one caption per sample."""

    latents: Tensor
    prompts: list[str]


class LatentPool:
    """``clips`` constant-caption clips of the training split, encoded by ``codec``.

    Each clip is ``clip_frames`` latent frames long; :meth:`sample` crops ``frames`` consecutive
    latent frames from random clips, so a pool of a few thousand clips gives many more windows.
    Deterministic for a seed.
    """

    def __init__(self, world: World, codec, clips: int, frames: int, clip_frames: int | None = None,
                 seed: int = 0, progress: bool = True, encode_batch: int = 64):
        self.frames = frames
        clip_frames = clip_frames or frames
        if clip_frames < frames:
            raise ValueError(f"clip_frames ({clip_frames}) must be at least frames ({frames})")
        gen = torch.Generator().manual_seed(seed)
        tf = codec.time_factor
        latents, prompts = [], []
        with torch.no_grad():
            for start in tqdm(range(0, clips, encode_batch), desc="encoding training clips", disable=not progress):
                n = min(encode_batch, clips - start)
                video, caps = world.batch(n, clip_frames * tf, gen)  # [n, T, 3, H, W]
                latents.append(codec.encode(video.transpose(1, 2)).to(torch.float32))  # [n, C, F, h, w]
                prompts.extend(caps)
        self.latents = torch.cat(latents)  # [clips, C, F, h, w]
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def sample(self, batch: int, gen: torch.Generator) -> LatentBatch:
        idx = torch.randint(len(self), (batch,), generator=gen)
        span = self.latents.shape[2] - self.frames + 1
        start = torch.randint(span, (batch,), generator=gen)
        x = torch.stack([self.latents[i, :, s:s + self.frames] for i, s in zip(idx.tolist(), start.tolist())])
        return LatentBatch(x, [self.prompts[i] for i in idx.tolist()])
