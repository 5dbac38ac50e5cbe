"""Latent codecs: video <-> latents, and seam-free chunk-by-chunk decoding.

Layouts: video ``[b, 3, T, H, W]`` float in 0..1; latents ``[b, C, F, h, w]`` with
``F = T / time_factor`` and ``h = H / space_factor``.

Two codecs share one interface (:class:`~streamdit_core.velocity.Codec`):

- :class:`PixelCodec`: latents are the pixels mapped to -1..1 (no compression). For tests and
  for models trained directly on pixels.
- :class:`VideoAutoencoder`: a small learned autoencoder with 2x temporal and 8x spatial
  compression, the embedded model's codec. The encoder sees each pair of frames alone. The
  decoder is *causal in time*: a latent frame's output depends only on it and the ``context``
  latent frames before it.

A stream emits latents a chunk at a time. Decoding each chunk alone starts the decoder's causal
convolutions cold at every chunk, which shows as a jump (a seam) at chunk boundaries.
:class:`ChunkDecoder` keeps the last ``context`` latent frames of the previous chunk and decodes
them with the new chunk (overlap decoding), dropping their frames: the result equals decoding
the whole stream at once, so no seam exists by construction. :func:`seam_ratio` measures it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .velocity import Codec

__all__ = ["ChunkDecoder", "CodecConfig", "PixelCodec", "VideoAutoencoder", "seam_ratio"]


def _check_video(video: Tensor, time_factor: int, space_factor: int) -> None:
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be [b, 3, T, H, W], got {list(video.shape)}")
    T, H, W = video.shape[2:]
    if T % time_factor or H % space_factor or W % space_factor:
        raise ValueError(
            f"video {list(video.shape)}: frames must be a multiple of {time_factor} and height/width "
            f"multiples of {space_factor}; trim or pad the clip"
        )


class PixelCodec(nn.Module):
    """Identity codec: latents = 2 * video - 1."""

    latent_channels = 3
    time_factor = 1
    space_factor = 1
    context = 0

    def encode(self, video: Tensor) -> Tensor:
        _check_video(video, 1, 1)
        return video * 2 - 1

    def decode(self, latents: Tensor) -> Tensor:
        return ((latents + 1) / 2).clamp(0, 1)

    def decode_with_context(self, context: Tensor, latents: Tensor) -> Tensor:
        """Frames are decoded one by one, so the context changes nothing."""
        return self.decode(latents)


@dataclass(frozen=True)
class CodecConfig:
    """The learned codec's shape. Defaults are the embedded model's codec."""

    latent_channels: int = 8  # an 8 x 8 x 8 latent per 64 x 64 frame: 24x fewer values
    time_factor: int = 1  # frames per latent frame (2 is supported; see the model card for why 1)
    # 8: 64x64 frames -> 8x8 latents. 4 (16x16 latents) is supported: it keeps shapes sharper
    # (a round trip of true held-out clips keeps the shape in 100% of frames against 84%), but
    # in CPU-hour runs a StreamDiT on its latents generated worse video (see the model card).
    space_factor: int = 8
    width: int = 64  # channels of the convolutions at the latent resolution
    temporal_kernel: int = 2  # causal kernel over latent frames in the decoder (context = k - 1)
    # Wrap: every convolution pads circularly, so the codec treats the frame as a torus, as the
    # world does (a shape leaving one border comes back at the other). False: zero padding.
    wrap: bool = False

    def __post_init__(self) -> None:
        if self.time_factor < 1 or self.latent_channels < 1 or self.width < 8 or self.temporal_kernel < 1:
            raise ValueError(f"invalid codec config {self}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CodecConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown codec config fields {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "CodecConfig":
        return cls.from_dict(json.loads(text))


class ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class VideoAutoencoder(nn.Module):
    """1x or 2x temporal, 4x or 8x spatial autoencoder in pixel-(un)shuffle stages, causal in time.

    Latents are normalised with per-channel ``shift`` and ``scale`` buffers (set after training
    by :meth:`calibrate`) so the diffusion model sees roughly unit-variance latents.
    """

    def __init__(self, config: CodecConfig | None = None):
        super().__init__()
        self.config = cfg = config or CodecConfig()
        self.latent_channels = cfg.latent_channels
        self.time_factor = cfg.time_factor
        self.space_factor = cfg.space_factor
        self.context = cfg.temporal_kernel - 1
        w, tf = cfg.width, cfg.time_factor
        if cfg.space_factor not in (4, 8):
            raise ValueError(f"space_factor must be 4 or 8 (two or three 2x stages), got {cfg.space_factor}")
        rgb = 3 * tf  # a latent frame's video frames stacked as channels
        # 2x stages each way; a stage moves 2x2 pixels into channels (pixel unshuffle) or back
        # (pixel shuffle), so no information is thrown away by striding or interpolation.
        if cfg.space_factor == 8:
            self.encoder = nn.Sequential(
                nn.PixelUnshuffle(2), nn.Conv2d(4 * rgb, w // 4, 3, padding=1), nn.SiLU(),  # H/2
                nn.PixelUnshuffle(2), nn.Conv2d(w, w // 2, 3, padding=1), ResBlock(w // 2),  # H/4
                nn.PixelUnshuffle(2), nn.Conv2d(2 * w, w, 3, padding=1), ResBlock(w), nn.SiLU(),  # H/8
                nn.Conv2d(w, cfg.latent_channels, 1),
            )
            self.decoder = nn.Sequential(
                ResBlock(w), ResBlock(w),
                nn.Conv2d(w, 2 * w, 3, padding=1), nn.PixelShuffle(2), ResBlock(w // 2),  # H/4
                nn.Conv2d(w // 2, w, 3, padding=1), nn.PixelShuffle(2), ResBlock(w // 4), nn.SiLU(),  # H/2
                nn.Conv2d(w // 4, 4 * rgb, 3, padding=1), nn.PixelShuffle(2),  # H
            )
        else:  # 4x: the same stages with one fewer, twice the channels at half resolution
            self.encoder = nn.Sequential(
                nn.PixelUnshuffle(2), nn.Conv2d(4 * rgb, w // 2, 3, padding=1), nn.SiLU(),  # H/2
                nn.PixelUnshuffle(2), nn.Conv2d(2 * w, w, 3, padding=1), ResBlock(w), nn.SiLU(),  # H/4
                nn.Conv2d(w, cfg.latent_channels, 1),
            )
            self.decoder = nn.Sequential(
                ResBlock(w), ResBlock(w),
                nn.Conv2d(w, 2 * w, 3, padding=1), nn.PixelShuffle(2), ResBlock(w // 2), nn.SiLU(),  # H/2
                nn.Conv2d(w // 2, 4 * rgb, 3, padding=1), nn.PixelShuffle(2),  # H
            )
        self.temporal = nn.Conv3d(cfg.latent_channels, w, (cfg.temporal_kernel, 3, 3), padding=(0, 1, 1))
        self.refine = nn.Conv2d(rgb, rgb, 3, padding=1)  # a last full-size touch on edges
        self.register_buffer("shift", torch.zeros(cfg.latent_channels))
        self.register_buffer("scale", torch.ones(cfg.latent_channels))
        if cfg.wrap:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Conv3d)) and any(m.padding):
                    m.padding_mode = "circular"

    def encode_raw(self, video: Tensor) -> Tensor:
        """Un-normalised latents ``[b, C, F, h, w]`` of video ``[b, 3, T, H, W]``."""
        _check_video(video, self.time_factor, self.space_factor)
        b = video.shape[0]
        frames = rearrange(video * 2 - 1, "b c (f t) h w -> (b f) (t c) h w", t=self.time_factor)  # [bF, 3t, H, W]
        z = self.encoder(frames)  # [bF, C, h, w]
        return rearrange(z, "(b f) c h w -> b c f h w", b=b)  # [b, C, F, h, w]

    def encode(self, video: Tensor) -> Tensor:
        """Normalised latents ``[b, C, F, h, w]`` of video ``[b, 3, T, H, W]`` in 0..1."""
        z = self.encode_raw(video)
        return (z - self.shift.view(1, -1, 1, 1, 1)) / self.scale.view(1, -1, 1, 1, 1)

    def decode_raw(self, z: Tensor, pad: bool = True) -> Tensor:
        """Video (not clamped) from un-normalised latents; with ``pad`` the first frame is repeated as context,
        otherwise the first ``context`` latent frames are context only and give no frames."""
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [b, {self.latent_channels}, F, h, w], got {list(z.shape)}")
        b = z.shape[0]
        if pad and self.context:
            z = torch.cat([z[:, :, :1].expand(-1, -1, self.context, -1, -1), z], dim=2)  # causal pad
        y = F.silu(self.temporal(z))  # [b, w, F, h, w]
        y = rearrange(y, "b c f h w -> (b f) c h w")  # [bF, w, h, w]
        frames = self.decoder(y)  # [bF, 3t, H, W]
        out = frames + self.refine(frames)  # [bF, 3t, H, W]
        out = rearrange(out, "(b f) (t c) h w -> b c (f t) h w", b=b, t=self.time_factor)  # [b, 3, T, H, W]
        return (out + 1) / 2  # not clamped here, so training gradients never vanish

    def decode(self, latents: Tensor) -> Tensor:
        """Video ``[b, 3, T, H, W]`` in 0..1 from normalised latents ``[b, C, F, h, w]``."""
        z = latents * self.scale.view(1, -1, 1, 1, 1).to(latents) + self.shift.view(1, -1, 1, 1, 1).to(latents)
        return self.decode_raw(z).clamp(0, 1)

    def decode_with_context(self, context: Tensor, latents: Tensor) -> Tensor:
        """Frames of ``latents`` only, decoded after ``context`` (``[b, C, self.context, h, w]``)."""
        z = torch.cat([context, latents], dim=2)
        z = z * self.scale.view(1, -1, 1, 1, 1).to(z) + self.shift.view(1, -1, 1, 1, 1).to(z)
        return self.decode_raw(z, pad=False).clamp(0, 1)

    @torch.no_grad()
    def calibrate(self, video: Tensor) -> None:
        """Sets ``shift``/``scale`` to the per-channel mean/std of the latents of ``video``."""
        z = self.encode_raw(video)
        self.shift.copy_(z.mean(dim=(0, 2, 3, 4)))
        self.scale.copy_(z.std(dim=(0, 2, 3, 4)).clamp_min(1e-4))


class ChunkDecoder:
    """Decodes a stream chunk by chunk with no seams (overlap decoding).

    ``decode(chunk)`` returns exactly the frames that decoding all chunks so far at once would
    give for this chunk (up to float rounding): the codec's last ``context`` latent frames are
    kept and decoded again as left context. With ``overlap=False`` each chunk is decoded alone
    (the seamed baseline, kept for measurement).
    """

    def __init__(self, codec: Codec, overlap: bool = True, tail: Tensor | None = None):
        self.codec = codec
        self.overlap = overlap
        self._tail: Tensor | None = tail  # a previous decoder's ``tail``, to continue its video

    @property
    def tail(self) -> Tensor | None:
        """The latent frames kept as left context for the next chunk (None before the first)."""
        return self._tail

    def reset(self) -> None:
        self._tail = None

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """``[b, C, f, h, w]`` -> ``[b, 3, f * time_factor, H, W]``."""
        k = getattr(self.codec, "context", 0)
        if not self.overlap or k == 0 or self._tail is None:
            out = self.codec.decode(latents)
        else:
            out = self.codec.decode_with_context(self._tail, latents)
        if self.overlap and k:
            joined = latents if self._tail is None else torch.cat([self._tail, latents], dim=2)
            if joined.shape[2] < k:  # a tiny first chunk: pad as a cold decode would
                joined = torch.cat([joined[:, :, :1].expand(-1, -1, k - joined.shape[2], -1, -1), joined], 2)
            self._tail = joined[:, :, -k:].clone()
        return out


def seam_ratio(video: Tensor, chunk_frames: int) -> float:
    """Mean frame-to-frame change at chunk boundaries divided by the mean change inside chunks.

    ``video`` ``[b, 3, T, H, W]``; a boundary is between frames ``i*chunk_frames - 1`` and
    ``i*chunk_frames``. A seamless decode gives about 1; a visible seam gives more.
    """
    diffs = (video[:, :, 1:] - video[:, :, :-1]).abs().mean(dim=(0, 1, 3, 4))  # [T-1]
    at = torch.zeros_like(diffs, dtype=torch.bool)
    at[chunk_frames - 1::chunk_frames] = True
    if not at.any() or at.all():
        raise ValueError(f"need more than one chunk of {chunk_frames} frames, got {video.shape[2]} frames")
    return float(diffs[at].mean() / diffs[~at].mean().clamp_min(1e-8))
