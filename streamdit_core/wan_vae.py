"""Wan 2.1's VAE (diffusers' ``AutoencoderKLWan``) as a streaming codec: Wan's time rule for
streams, training on your clips, and the file layout ComfyUI's Load VAE reads.

A Wan-architecture VAE trained here (:func:`new_wan_vae`, then
:func:`~streamdit_core.train.train_codec`) keeps Wan 2.1's layout (16 latent channels, 8x in
space, 4x in time, channel multipliers 1, 2, 4, 4, two residual blocks per level) with any base
width, which is what ComfyUI detects a Wan 2.1 VAE by; :meth:`WanVAE.calibrate` folds the
latents' per-channel statistics into its 1x1 quant convolutions so that Wan's fixed latent
normalisation (``latents_mean`` / ``latents_std``, what ComfyUI's Wan latent format applies)
gives unit-scale latents. :func:`comfy_vae_state_dict` renames its weights to the original Wan
layout. diffusers is an optional training extra (``requirements-train.txt``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["COMFY_VAE_FILE", "WanFrameRule", "WanVAE", "comfy_vae_state_dict", "load_wan_vae", "new_wan_vae",
           "save_wan_vae", "tiny_wan_vae_config"]

COMFY_VAE_FILE = "vae_comfyui.safetensors"  # beside vae/ in a folder written by save_wan_vae


def _check_video(video: Tensor) -> None:
    if video.dim() != 5 or video.shape[1] != 3 or video.shape[2] % 4:
        raise ValueError(f"video must be [b, 3, T, H, W] with T a multiple of 4, got {list(video.shape)}")


class WanFrameRule:
    """Wan 2.1's VAE time rule for streams: latents ``[b, C, F, h, w]`` in the model's space <->
    video ``[b, 3, 4F, 8h, 8w]`` in 0..1, every latent standing for 4 frames.

    Wan's VAE encodes and decodes the first latent of a clip as a single frame. Here a decode
    puts one latent in front (a copy of the first, or the ``context`` latents before the chunk)
    and drops the frames that gives; an encode puts a copy of the first frame in front and drops
    its latent. Subclasses give the VAE's own calls: :meth:`_decode_clip` (model-space latents
    ``[b, C, f, h, w]`` -> ``[b, 3, 1 + 4 (f - 1), H, W]`` in 0..1) and :meth:`_encode_clip`
    (``[b, 3, 1 + 4k, H, W]`` in 0..1 -> ``[b, C, 1 + k, h, w]`` in model space).
    """

    time_factor = 4
    latent_channels = 16
    space_factor = 8
    context = 2

    def _decode_clip(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def _encode_clip(self, video: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """``[b, C, F, h, w]`` -> ``[b, 3, 4F, H, W]``: the first latent behind a copy of itself."""
        return self._decode_clip(torch.cat([latents[:, :, :1], latents], 2))[:, :, 1:]

    @torch.no_grad()
    def decode_with_context(self, tail: Tensor, latents: Tensor) -> Tensor:
        """The frames of ``latents`` decoded behind ``tail`` (the previous chunk's last latents)."""
        k = tail.shape[2]
        return self._decode_clip(torch.cat([tail, latents], 2))[:, :, 1 + 4 * (k - 1):]

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """``[b, 3, T, H, W]`` in 0..1 (T a multiple of 4) -> ``[b, C, T / 4, h, w]``: frames
        4i..4i+3 make latent i (the first frame is encoded alone in front and dropped)."""
        _check_video(video)
        return self._encode_clip(torch.cat([video[:, :, :1], video], 2))[:, :, 1:]


def _straight_through_clamp(module: nn.Module, args, out: Tensor) -> Tensor:
    """diffusers clamps decoded pixels to -1..1, so a pixel clamped on the wrong side gets no
    gradient and a VAE in training can fall into all-black frames it never leaves. This hook on
    the decoder clamps first with the gradient of the identity: the same pixels, a live gradient."""
    return out + (out.clamp(-1, 1) - out).detach()


class WanVAE(WanFrameRule, nn.Module):
    """diffusers' ``AutoencoderKLWan`` (Wan 2.1's VAE) as a streaming codec, latents normalised
    per channel with the VAE's ``latents_mean`` / ``latents_std`` as Wan's pipelines do.

    It is also a codec :func:`~streamdit_core.train.train_codec` trains: :meth:`encode_raw` /
    :meth:`decode_raw` keep gradients, :attr:`encoder` is what a decoder refinement freezes, and
    :meth:`calibrate` sets the latent statistics.
    """

    def __init__(self, vae: nn.Module):
        nn.Module.__init__(self)
        self.vae = vae.eval()
        config = vae.config
        self.latent_channels = int(config.z_dim)
        self.space_factor = 2 ** (len(config.dim_mult) - 1)
        self.mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        vae.decoder.register_forward_hook(_straight_through_clamp)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def encoder(self) -> nn.Module:
        """The encoder and its quant convolution (frozen by a decoder-only refinement)."""
        return nn.ModuleList([self.vae.encoder, self.vae.quant_conv])

    def _mu(self, clip: Tensor) -> Tensor:
        """Raw latent means ``[b, C, 1 + k, h, w]`` of ``[b, 3, 1 + 4k, H, W]`` in 0..1."""
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode((clip * 2 - 1).to(self.device, dtype)).latent_dist.mean.float()

    def _decode_raw_clip(self, raw: Tensor) -> Tensor:
        dtype = next(self.vae.parameters()).dtype
        return (self.vae.decode(raw.to(self.device, dtype), return_dict=False)[0].float() + 1) / 2

    def _encode_clip(self, video: Tensor) -> Tensor:
        z = self._mu(video)
        return (z - self.mean.to(z.device)) / self.std.to(z.device)

    def _decode_clip(self, z: Tensor) -> Tensor:
        raw = z.float() * self.std.to(z.device) + self.mean.to(z.device)
        return self._decode_raw_clip(raw).clamp(0, 1).to(z.device)

    def encode_raw(self, video: Tensor) -> Tensor:
        """Raw latents ``[b, C, T / 4, h, w]`` of ``[b, 3, T, H, W]`` in 0..1, with gradients
        (the frame rule of :meth:`encode`)."""
        _check_video(video)
        return self._mu(torch.cat([video[:, :, :1], video], 2))[:, :, 1:]

    def decode_raw(self, raw: Tensor) -> Tensor:
        """Video ``[b, 3, 4F, H, W]`` (0..1, not clamped, with gradients) of raw latents."""
        return self._decode_raw_clip(torch.cat([raw[:, :, :1], raw], 2))[:, :, 1:]

    @torch.no_grad()
    def calibrate(self, video: Tensor) -> None:
        """Folds the per-channel statistics of ``video``'s raw latents into the 1x1 quant
        convolutions, so that they get the VAE's ``latents_mean`` / ``latents_std`` (and
        :meth:`encode` unit scale) while every decoded frame stays as it was."""
        z = torch.cat([self.encode_raw(clip[None]) for clip in video])  # [b, C, F, h, w]
        m, s = z.mean(dim=(0, 2, 3, 4)), z.std(dim=(0, 2, 3, 4)).clamp_min(1e-4)  # [C]
        gain = self.std.flatten() / s  # raw' = gain * raw + offset
        offset = self.mean.flatten() - gain * m
        c = self.latent_channels
        quant, post = self.vae.quant_conv, self.vae.post_quant_conv
        quant.weight[:c] *= gain.view(-1, 1, 1, 1, 1).to(quant.weight)
        quant.bias[:c] = gain.to(quant.bias) * quant.bias[:c] + offset.to(quant.bias)
        quant.bias[c:] += 2 * gain.log().to(quant.bias)  # the posterior's log-variance scales too
        post.weight /= gain.view(1, -1, 1, 1, 1).to(post.weight)
        post.bias -= (post.weight.flatten(1) @ offset.to(post.weight)).to(post.bias)


def new_wan_vae(base_dim: int = 16, **overrides) -> WanVAE:
    """A Wan 2.1-architecture VAE with random weights, to train on your clips: Wan 2.1's layout
    (what ComfyUI's Load VAE recognises) at base width ``base_dim`` (Wan's own is 96)."""
    return load_wan_vae(tiny_wan_vae_config(base_dim=base_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=2, **overrides))


def tiny_wan_vae_config(**overrides) -> dict:
    """A small Wan VAE config (random weights, for tests): 16 latent channels, 8x in space, 4x in time."""
    config = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, attn_scales=[],
                  temperal_downsample=[False, True, True])
    config.update(overrides)
    return config


def load_wan_vae(source: str | os.PathLike | dict, dtype: torch.dtype = torch.float32) -> WanVAE:
    """Wan 2.1's VAE from a diffusers folder (``vae/`` of a Wan repository, or that folder), from
    disk only, or with random weights from a config dict (:func:`tiny_wan_vae_config`)."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"the Wan VAE needs diffusers: pip install -r requirements-train.txt; {err}") from None
    if isinstance(source, dict):
        vae = AutoencoderKLWan(**source)
        return WanVAE(vae if dtype == torch.float32 else vae.to(dtype))
    folder = os.fspath(source)
    if os.path.isdir(os.path.join(folder, "vae")):
        folder = os.path.join(folder, "vae")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"{source}: not a diffusers Wan VAE folder (no config.json in it or in its vae/ folder)")
    return WanVAE(AutoencoderKLWan.from_pretrained(folder, torch_dtype=dtype, local_files_only=True))


def save_wan_vae(vae: WanVAE, folder: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Writes ``folder/vae/`` (diffusers, what ``train --init wan:FOLDER`` reads) and
    ``folder/vae_comfyui.safetensors`` (ComfyUI's Load VAE; from ``models/vae/``). Returns the
    ComfyUI file."""
    from .checkpoint import write_safetensors

    folder = Path(folder)
    vae.vae.save_pretrained(folder / "vae")
    meta = {"format": "comfyui-wan-vae", "base_dim": str(vae.vae.config.base_dim), **(metadata or {})}
    return write_safetensors(comfy_vae_state_dict(vae), folder / COMFY_VAE_FILE, meta)


# --------------------------------------------------------------------------------------------
# ComfyUI's key layout (the original Wan 2.1 VAE's names)
# --------------------------------------------------------------------------------------------

_RESNET = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
           "conv2": "residual.6", "conv_shortcut": "shortcut"}
_OUTER = {"quant_conv": "conv1", "post_quant_conv": "conv2", "encoder.conv_in": "encoder.conv1",
          "decoder.conv_in": "decoder.conv1", "encoder.norm_out.gamma": "encoder.head.0.gamma",
          "encoder.conv_out": "encoder.head.2", "decoder.norm_out.gamma": "decoder.head.0.gamma",
          "decoder.conv_out": "decoder.head.2"}


def _resnet(inner: str) -> str:
    for ours, theirs in _RESNET.items():
        if inner == ours or inner.startswith(ours + "."):
            return theirs + inner[len(ours):]
    return inner  # resample.1.*, time_conv.*: the same in both layouts


def _comfy_vae_key(key: str, resnets: int) -> str:
    for ours, theirs in _OUTER.items():
        if key == ours or key.startswith(ours + "."):
            return theirs + key[len(ours):]
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d)\.(.+)", key):
        side, kind, i, inner = m.groups()
        index = 1 if kind == "attentions" else 2 * int(i)  # middle: resnet, attention, resnet
        return f"{side}.middle.{index}.{inner if kind == 'attentions' else _resnet(inner)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key):
        return f"encoder.downsamples.{m[1]}.{_resnet(m[2])}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)", key):
        block, kind, i, inner = int(m[1]), m[2], int(m[3]), m[4]
        # the original decoder is one flat list: each level's resnets, then its upsampler
        index = block * (resnets + 1) + (i if kind == "resnets" else resnets)
        return f"decoder.upsamples.{index}.{_resnet(inner) if kind == 'resnets' else inner}"
    raise KeyError(f"no ComfyUI Wan VAE name for the diffusers weight {key!r}")


def comfy_vae_state_dict(vae: WanVAE | nn.Module) -> dict[str, Tensor]:
    """The VAE's weights under the original Wan 2.1 names (``decoder.middle.0.residual.0.gamma``
    ...), the layout ComfyUI's Load VAE detects and loads."""
    module = vae.vae if isinstance(vae, WanVAE) else vae
    resnets = int(module.config.num_res_blocks) + 1  # a decoder level has one more resnet
    return {_comfy_vae_key(k, resnets): v.detach().contiguous() for k, v in module.state_dict().items()}
