"""Training batches from the world: clips rendered once, encoded once, cropped at random."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .scenes import SWITCH_KINDS, World, check_switch_kinds

__all__ = ["LatentBatch", "LatentPool", "subject_cover"]


@dataclass(frozen=True)
class LatentBatch:
    """latents ``[b, C, F, h, w]``, one caption per sample and, from a pool, the share of each
    latent pixel that the subject (with a two-pixel margin) covers, ``[b, 1, F, h, w]``, and
    ``switched``, bool ``[b]``: the window shows a prompt switch (its oldest and newest frames
    have different captions) or a frame without its subject (an ``appear`` clip before the
    subject comes in); ``frame_prompts``, from a pool: the caption in force at each latent frame
    of each window (``b`` lists of ``F``), what a per-chunk prompt switch conditions the buffer
    with, where ``prompts`` is the newest frame's."""

    latents: Tensor
    prompts: list[str]
    subject: Tensor | None = None
    switched: Tensor | None = None
    frame_prompts: list[list[str]] | None = None


class LatentPool:
    """``clips`` clips of the training split, encoded by ``codec``.

    ``world`` is the synthetic world or a :class:`~streamdit_core.data.ClipFolder`: anything
    whose ``batch(n, frames, gen)`` gives ``[n, frames, 3, H, W]`` clips and their captions.

    Each clip is ``clip_frames`` latent frames long; :meth:`sample` crops ``frames`` consecutive
    latent frames from random clips, so a pool of a few thousand clips gives many more windows.
    Deterministic for a seed.

    A share ``switch_share`` of the clips (from the synthetic world only) change once, on a latent
    frame's boundary, taking turns among ``switch_kinds`` (see :meth:`World.switch_batch`): one
    attribute changes, as at a prompt switch in a stream, or ("appear") the subject appears in
    frames that showed only the background. A window is captioned with the caption of its newest
    frame (the input end): a window that ends after an attribute's change carries the new caption
    over older frames that still show the old scene, which is what the model sees in the buffer
    after an immediate switch, and what teaches it to follow the prompt over its reference frames;
    an "appear" window teaches it to draw a subject its reference frames lost.
    """

    def __init__(self, world: World, codec, clips: int, frames: int, clip_frames: int | None = None,
                 seed: int = 0, progress: bool = True, encode_batch: int = 64, cache: str | os.PathLike | None = None,
                 cache_key: str = "", switch_share: float = 0.0,
                 switch_kinds: Sequence[str] | None = None):
        """``cache``: a folder for the encoded pool as safetensors shards (one per ``encode_batch``
        clips); a pool made again with the same ``cache_key`` (what the source and the codec are)
        and settings is read back instead of encoded, so a resumed run does not encode again."""
        self.frames = frames
        clip_frames = clip_frames or frames
        if clip_frames < frames:
            raise ValueError(f"clip_frames ({clip_frames}) must be at least frames ({frames})")
        if not 0.0 <= switch_share <= 1.0:
            raise ValueError(f"switch_share must be in 0..1, got {switch_share}")
        if switch_share and not hasattr(world, "switch_batch"):
            raise ValueError(f"switch_share={switch_share:g} needs clips rendered with a prompt switch, which only "
                             f"the synthetic world makes; {type(world).__name__} cannot: leave switch_share at 0")
        if switch_share and clip_frames < 2:
            raise ValueError(f"switch clips need at least 2 latent frames, got clip_frames={clip_frames}")
        self.switch_share = switch_share
        self.switch_kinds = check_switch_kinds(switch_kinds or SWITCH_KINDS[:4], "switch_kinds")
        kinds = list(self.switch_kinds)
        key = json.dumps([cache_key, clips, clip_frames, seed, encode_batch]
                         + ([switch_share, kinds] if switch_share else []))
        if cache is not None and self._load(Path(cache), key):
            return
        gen = torch.Generator().manual_seed(seed)
        tf = codec.time_factor
        latents, cover, prompts, switches = [], [], [], []
        with torch.no_grad():
            for start in tqdm(range(0, clips, encode_batch), desc="encoding training clips", disable=not progress):
                n = min(encode_batch, clips - start)
                switched = round(n * switch_share)
                video, caps = world.batch(n - switched, clip_frames * tf, gen) if n > switched else (None, [])
                changes = [(clip_frames, "")] * len(caps)  # (first latent frame of the new caption, caption)
                if switched:
                    more, scripts = world.switch_batch(switched, clip_frames * tf, gen, every=tf, kinds=kinds)
                    video = more if video is None else torch.cat([video, more])  # [n, T, 3, H, W]
                    caps = caps + [script[0][1].caption for script in scripts]
                    changes += [(script[1][0] // tf, script[1][1].caption) if script[1][1] != script[0][1]
                                else (clip_frames, "") for script in scripts]  # an appearing subject keeps its caption
                latents.append(codec.encode(video.transpose(1, 2)).to(torch.float32))  # [n, C, F, h, w]
                cover.append(subject_cover(video, tf, codec.space_factor).to(torch.float16))
                prompts.extend(caps)
                switches.extend(changes)
                if cache is not None:
                    self._save_shard(Path(cache), start // encode_batch, latents[-1], cover[-1], caps, key, changes)
        self.latents = torch.cat(latents)  # [clips, C, F, h, w]
        self.subject = torch.cat(cover)  # [clips, 1, F, h, w]
        self.prompts = prompts
        self.switches = switches
        if cache is not None:
            (Path(cache) / "pool.json").write_text(json.dumps({"key": key, "shards": len(latents)}))

    @staticmethod
    def _save_shard(folder: Path, index: int, latents: Tensor, cover: Tensor, prompts: list[str], key: str,
                    switches: list[tuple[int, str]]) -> None:
        from ..checkpoint import write_safetensors

        (folder / "pool.json").unlink(missing_ok=True)  # the pool is whole only once its index is written
        meta = {"key": key, "prompts": json.dumps(prompts)}
        if any(caption for _, caption in switches):
            meta["switches"] = json.dumps(switches)
        write_safetensors({"latents": latents.contiguous(), "subject": cover.contiguous()},
                          folder / f"latents-{index:05d}.safetensors", meta)

    def _load(self, folder: Path, key: str) -> bool:
        """Reads a cached pool; False (encode it) when there is none or it was made differently."""
        from safetensors import safe_open

        index = folder / "pool.json"
        if not index.is_file() or json.loads(index.read_text()).get("key") != key:
            return False
        latents, cover, prompts, switches = [], [], [], []
        for i in range(json.loads(index.read_text())["shards"]):
            with safe_open(str(folder / f"latents-{i:05d}.safetensors"), framework="pt") as f:
                meta = f.metadata()
                if meta.get("key") != key:
                    return False
                latents.append(f.get_tensor("latents"))
                cover.append(f.get_tensor("subject"))
                caps = json.loads(meta["prompts"])
                prompts.extend(caps)
                frames = latents[-1].shape[2]
                switches.extend([(int(at), caption) for at, caption in json.loads(meta["switches"])]
                                if "switches" in meta else [(frames, "")] * len(caps))
        self.latents, self.subject, self.prompts = torch.cat(latents), torch.cat(cover), prompts
        self.switches = switches
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
        switched = torch.tensor([self.caption(i, s) != self.caption(i, s + self.frames - 1) for i, s in pick])
        switched |= cover.amax(dim=(1, 3, 4)).eq(0).any(dim=1)  # a frame without its subject
        frames = [[self.caption(i, s + f) for f in range(self.frames)] for i, s in pick]
        return LatentBatch(x, [row[-1] for row in frames], cover, switched, frames)

    def switch_metadata(self) -> dict[str, str]:
        """The checkpoint metadata entries that record this pool's switch clips (none without)."""
        if not self.switch_share:
            return {}
        return {"switch_share": f"{self.switch_share:g}", "switch_kinds": ",".join(self.switch_kinds)}

    def caption(self, clip: int, frame: int) -> str:
        """The caption in force at latent frame ``frame`` of clip ``clip``."""
        at, second = self.switches[clip]
        return second if frame >= at else self.prompts[clip]


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
