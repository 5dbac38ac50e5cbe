"""Training batches from the world: clips rendered once, encoded once, cropped at random."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .scenes import World

__all__ = ["LatentBatch", "LatentPool", "subject_cover"]


@dataclass(frozen=True)
class LatentBatch:
    """latents ``[b, C, F, h, w]``, one caption per sample and, from a pool, the share of each
    latent pixel that the subject (with a two-pixel margin) covers, ``[b, 1, F, h, w]``."""

    latents: Tensor
    prompts: list[str]
    subject: Tensor | None = None


class LatentPool:
    """``clips`` constant-caption clips of the training split, encoded by ``codec``.

    ``world`` is the synthetic world or a :class:`~streamdit_core.data.ClipFolder`: anything
    whose ``batch(n, frames, gen)`` gives ``[n, frames, 3, H, W]`` clips and their captions.

    Each clip is ``clip_frames`` latent frames long; :meth:`sample` crops ``frames`` consecutive
    latent frames from random clips, so a pool of a few thousand clips gives many more windows.
    Deterministic for a seed.
    """

    def __init__(self, world: World, codec, clips: int, frames: int, clip_frames: int | None = None,
                 seed: int = 0, progress: bool = True, encode_batch: int = 64, cache: str | os.PathLike | None = None,
                 cache_key: str = ""):
        """``cache``: a folder for the encoded pool as safetensors shards (one per ``encode_batch``
        clips); a pool made again with the same ``cache_key`` (what the source and the codec are)
        and settings is read back instead of encoded, so a resumed run does not encode again."""
        self.frames = frames
        clip_frames = clip_frames or frames
        if clip_frames < frames:
            raise ValueError(f"clip_frames ({clip_frames}) must be at least frames ({frames})")
        key = json.dumps([cache_key, clips, clip_frames, seed, encode_batch])
        if cache is not None and self._load(Path(cache), key):
            return
        gen = torch.Generator().manual_seed(seed)
        tf = codec.time_factor
        latents, cover, prompts = [], [], []
        with torch.no_grad():
            for start in tqdm(range(0, clips, encode_batch), desc="encoding training clips", disable=not progress):
                n = min(encode_batch, clips - start)
                video, caps = world.batch(n, clip_frames * tf, gen)  # [n, T, 3, H, W]
                latents.append(codec.encode(video.transpose(1, 2)).to(torch.float32))  # [n, C, F, h, w]
                cover.append(subject_cover(video, tf, codec.space_factor).to(torch.float16))
                prompts.extend(caps)
                if cache is not None:
                    self._save_shard(Path(cache), start // encode_batch, latents[-1], cover[-1], caps, key)
        self.latents = torch.cat(latents)  # [clips, C, F, h, w]
        self.subject = torch.cat(cover)  # [clips, 1, F, h, w]
        self.prompts = prompts
        if cache is not None:
            (Path(cache) / "pool.json").write_text(json.dumps({"key": key, "shards": len(latents)}))

    @staticmethod
    def _save_shard(folder: Path, index: int, latents: Tensor, cover: Tensor, prompts: list[str], key: str) -> None:
        from ..checkpoint import write_safetensors

        (folder / "pool.json").unlink(missing_ok=True)  # the pool is whole only once its index is written
        write_safetensors({"latents": latents.contiguous(), "subject": cover.contiguous()},
                          folder / f"latents-{index:05d}.safetensors", {"key": key, "prompts": json.dumps(prompts)})

    def _load(self, folder: Path, key: str) -> bool:
        """Reads a cached pool; False (encode it) when there is none or it was made differently."""
        from safetensors import safe_open

        index = folder / "pool.json"
        if not index.is_file() or json.loads(index.read_text()).get("key") != key:
            return False
        latents, cover, prompts = [], [], []
        for i in range(json.loads(index.read_text())["shards"]):
            with safe_open(str(folder / f"latents-{i:05d}.safetensors"), framework="pt") as f:
                if f.metadata().get("key") != key:
                    return False
                latents.append(f.get_tensor("latents"))
                cover.append(f.get_tensor("subject"))
                prompts.extend(json.loads(f.metadata()["prompts"]))
        self.latents, self.subject, self.prompts = torch.cat(latents), torch.cat(cover), prompts
        return True

    def __len__(self) -> int:
        return len(self.prompts)

    def sample(self, batch: int, gen: torch.Generator) -> LatentBatch:
        idx = torch.randint(len(self), (batch,), generator=gen)
        span = self.latents.shape[2] - self.frames + 1
        start = torch.randint(span, (batch,), generator=gen)
        pick = list(zip(idx.tolist(), start.tolist()))
        x = torch.stack([self.latents[i, :, s:s + self.frames] for i, s in pick])
        cover = torch.stack([self.subject[i, :, s:s + self.frames] for i, s in pick]).float()
        return LatentBatch(x, [self.prompts[i] for i in idx.tolist()], cover)


def subject_cover(video: Tensor, time_factor: int, space_factor: int, margin: int = 2) -> Tensor:
    """Share of each latent pixel covered by the subject, ``[n, 1, F, h, w]`` in 0..1.

    The subject is every pixel away (RGB distance over 0.1) from its frame's median color,
    grown by ``margin`` pixels so the edges that tell one shape from another are inside it.
    ``video`` is ``[n, T, 3, H, W]`` in 0..1.
    """
    n, T, _, H, W = video.shape
    bg = video.flatten(3).median(dim=3).values[..., None, None]  # [n, T, 3, 1, 1]
    fg = ((video - bg).norm(dim=2) > 0.1).float().reshape(n * T, 1, H, W)
    if margin:
        fg = F.max_pool2d(fg, 2 * margin + 1, stride=1, padding=margin)
    fg = F.avg_pool2d(fg, space_factor)  # [n*T, 1, h, w]
    fg = fg.reshape(n, T // time_factor, time_factor, 1, H // space_factor, W // space_factor).mean(2)
    return fg.permute(0, 2, 1, 3, 4).contiguous()  # [n, 1, F, h, w]
