"""A Wan 2.1 text-to-video transformer (diffusers' ``WanTransformer3DModel``) as a velocity model.

The StreamDiT method needs a noise level per frame. Wan's transformer takes a timestep per token
(``timestep [B, L]``, what Wan 2.2's image-to-video path uses), so each frame's sigma is spread
over that frame's tokens: frames at different noise levels get different adaLN modulation, as
in our own DiT. Wan is a flow model on our convention (``x = (1 - sigma) x0 + sigma eps``, output
``v = eps - x0``, timestep ``1000 sigma``), so sigmas and outputs pass through unchanged; the
schedule's warp is Wan's shift.

With it, the trainer (:func:`~streamdit_core.train.train`), distillation and the streams treat
a Wan model as they treat a :class:`~streamdit_core.model.StreamDiT`. diffusers is an optional
training extra (``requirements-train.txt``); nothing here is needed to stream the embedded model.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from .conditioning import FrameText, TextEmbedding, per_prompt
from .schedule import SigmaWarp
from .velocity import Geometry

__all__ = ["WAN_TIMESTEPS", "WanVelocity", "load_wan", "tiny_wan_config"]

WAN_TIMESTEPS = 1000  # Wan's timestep is 1000 sigma


def _diffusers():
    try:
        from diffusers import WanTransformer3DModel
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Wan models need diffusers: pip install -r requirements-train.txt "
                          f"(or `pip install diffusers`); {err}") from None
    return WanTransformer3DModel


class WanVelocity(nn.Module):
    """``forward(x [B, C, F, h, w], sigma [B, F], text) -> v [B, C, F, h, w]`` (float32) over a
    diffusers ``WanTransformer3DModel``.

    ``text`` is a :class:`TextEmbedding` of the text encoder's token states ``[B or 1, L, D]``
    (D = the transformer's ``text_dim``; Wan's own is umT5's 4096), or a :class:`FrameText`, which
    runs the transformer once per prompt.

    Args:
        transformer: the diffusers model (its temporal patch must be 1: one latent frame, one sigma).
        buffer_frames: latent frames of the moving buffer.
        latent_size: ``(h, w)`` of a latent frame.
        shift: Wan's sigma shift (3 for 480p in Wan 2.1's recipe, 5 for 720p).
    """

    def __init__(self, transformer: nn.Module, buffer_frames: int, latent_size: tuple[int, int], shift: float = 3.0):
        super().__init__()
        config = transformer.config
        pt, ph, pw = config.patch_size
        if pt != 1 or ph != pw:
            raise ValueError(f"need a Wan patch (1, p, p) (one sigma per latent frame), got {tuple(config.patch_size)}")
        if latent_size[0] % ph or latent_size[1] % pw:
            raise ValueError(f"latent size {tuple(latent_size)} is not a multiple of the patch {ph}")
        self.transformer = transformer
        self.geometry = Geometry(buffer_frames, config.in_channels, tuple(latent_size), ph,
                                 SigmaWarp.shift(shift) if shift != 1 else SigmaWarp.identity())

    @property
    def config(self) -> Any:
        return self.transformer.config

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def forward(self, x: Tensor, sigma: Tensor, text: TextEmbedding | FrameText) -> Tensor:
        if x.dim() != 5 or sigma.shape != x.shape[:1] + x.shape[2:3]:
            raise ValueError(f"need x [B, C, F, h, w] and sigma [B, F], got {list(x.shape)} and {list(sigma.shape)}")
        return per_prompt(self._call, x, sigma, text)

    def _call(self, x: Tensor, sigma: Tensor, text: TextEmbedding) -> Tensor:
        B, _, F, h, w = x.shape
        p = self.geometry.patch_size
        dtype = next(self.transformer.parameters()).dtype
        tokens = (h // p) * (w // p)
        timestep = (sigma.to(x.device, torch.float32) * WAN_TIMESTEPS)[:, :, None].expand(B, F, tokens)  # [B, F, hw]
        context = text.tokens.to(x.device, dtype)  # [B or 1, L, D]
        if context.shape[0] == 1 and B > 1:
            context = context.expand(B, -1, -1)  # [B, L, D]
        out = self.transformer(x.to(dtype), timestep.reshape(B, F * tokens), encoder_hidden_states=context,
                               return_dict=False)[0]  # [B, C, F, h, w]
        return out.float()


def tiny_wan_config(**overrides) -> dict:
    """A Wan-architecture config of a few layers and a small width (random weights, for tests and
    CPU experiments): 16 latent channels as Wan 2.1's VAE, patch (1, 2, 2), text width 32."""
    config = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
                  text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)
    config.update(overrides)
    return config


def load_wan(source: str | os.PathLike | dict, buffer_frames: int, latent_size: tuple[int, int],
             shift: float = 3.0, dtype: torch.dtype = torch.float32) -> WanVelocity:
    """A Wan transformer from a diffusers folder (``transformer/`` of a Wan 2.1 repository, or
    that folder itself), loaded from disk only, or built with random weights from a config dict
    (:func:`tiny_wan_config`)."""
    WanTransformer3DModel = _diffusers()
    if isinstance(source, dict):
        transformer = WanTransformer3DModel(**source)
        transformer = transformer if dtype == torch.float32 else transformer.to(dtype)
    else:
        folder = os.fspath(source)
        if os.path.isdir(os.path.join(folder, "transformer")):
            folder = os.path.join(folder, "transformer")
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(f"{source}: not a diffusers Wan transformer folder (no config.json in it "
                                    "or in its transformer/ folder)")
        transformer = WanTransformer3DModel.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    return WanVelocity(transformer, buffer_frames, latent_size, shift)
