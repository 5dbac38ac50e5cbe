"""Window self-attention over a buffer of video tokens: 3D windows, Swin shift masks, two kernels.

A block's tokens form a grid ``(F, h, w)``: latent frames by token rows by token columns. Each
block attends inside 3D windows of ``(Fw, Hw, Ww)`` tokens; odd-numbered blocks shift their
windows by half a window (Swin), so information crosses window borders from one block to the
next. :class:`WindowLayout` is the arithmetic of one grid (clipping, padding, shifts, which
tokens may see which); :class:`WindowSelfAttention` is the layer, with two kernels computing the
same attention: ``sdpa`` (windows folded into the head axis; a dense mask where one is needed)
and ``flex`` (flex_attention with a block mask: no dense mask, masked blocks skipped).

Shapes: tokens ``[B, L, D]`` with ``L = F * h * w``; windows ``[B, nW, Wt, D]`` with ``nW``
windows of ``Wt = Fw * Hw * Ww`` tokens; ``n`` heads of width ``d``.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F_
from einops import rearrange
from torch import Tensor, nn

__all__ = ["ATTENTION_BACKENDS", "WindowLayout", "WindowSelfAttention"]


@dataclass(frozen=True)
class WindowLayout:
    """How a token grid splits into windows for one block.

    Attributes:
        grid: ``(F, h, w)`` tokens.
        window: ``(Fw, Hw, Ww)``, each clipped to the grid.
        padded: the grid rounded up to whole windows; padding tokens are never attended to.
        shift: cyclic shift per axis: half a window in shifted blocks, 0 where the window covers
            the whole axis (shifting it would only cut the axis in two).
    """

    grid: tuple[int, int, int]
    window: tuple[int, int, int]
    padded: tuple[int, int, int]
    shift: tuple[int, int, int]

    @classmethod
    def build(cls, grid: tuple[int, int, int], window: tuple[int, int, int] | None, shifted: bool) -> "WindowLayout":
        grid = tuple(grid)
        win = grid if window is None else tuple(min(wi, gi) for wi, gi in zip(window, grid))
        padded = tuple(-(-g // wi) * wi for g, wi in zip(grid, win))
        shift = tuple(wi // 2 if shifted and wi < g else 0 for wi, g in zip(win, grid))
        return cls(grid, win, padded, shift)

    @property
    def needs_mask(self) -> bool:
        """Whether some token may not see every token of its window (shifted or padded)."""
        return any(self.shift) or self.padded != self.grid

    @property
    def tokens_per_window(self) -> int:
        return self.window[0] * self.window[1] * self.window[2]

    def regions(self, device) -> tuple[Tensor, Tensor]:
        """Per token, in rolled window order: its side of every wrap (int64 ``[nW, Wt]``) and
        whether it is a real token rather than padding (bool ``[nW, Wt]``).

        After the cyclic roll, the last window along a shifted axis holds tokens from both ends
        of the grid; a token attends only to tokens from its own side of that wrap (Swin's mask),
        and never to padding.
        """
        region = torch.zeros(self.padded, dtype=torch.int64, device=device)  # [F', h', w']
        valid = torch.ones(self.padded, dtype=torch.bool, device=device)  # [F', h', w']
        for axis, (g, gp, sh) in enumerate(zip(self.grid, self.padded, self.shift)):
            view = [-1 if a == axis else 1 for a in range(3)]
            pos = torch.arange(gp, device=device)  # [gp], rolled position
            region = region + ((pos >= gp - sh).long() << axis).view(view)
            valid = valid & ((pos + sh) % gp < g).view(view)  # original position inside the grid
        fw, hw, ww = self.window
        region, valid = (
            rearrange(t, "(nf fw) (nh hw) (nw ww) -> (nf nh nw) (fw hw ww)", fw=fw, hw=hw, ww=ww)  # [nW, Wt]
            for t in (region, valid)
        )
        return region, valid

    def mask(self, device) -> Tensor | None:
        """Which keys each query may see, in rolled window order: bool ``[nW, Wt, Wt]``, or None
        when every token sees its whole window. Every token may see itself, so no row is empty."""
        if not self.needs_mask:
            return None
        region, valid = self.regions(device)  # [nW, Wt]
        eye = torch.eye(region.shape[1], dtype=torch.bool, device=device)  # [Wt, Wt]
        return (region[:, :, None] == region[:, None, :]) & valid[:, None, :] | eye  # [nW, Wt, Wt]

    def block_mask(self, device):
        """The same rule as :meth:`mask` as a flex_attention ``BlockMask`` over the windows laid
        end to end (``nW * Wt`` tokens): only blocks inside a window are ever computed, and no
        dense mask is built."""
        from torch.nn.attention.flex_attention import create_block_mask

        region, valid = (t.flatten() for t in self.regions(device))  # [nW*Wt]
        wt = self.tokens_per_window

        def mask_mod(b, h, q, kv):
            same = (q // wt == kv // wt) & (region[q] == region[kv]) & valid[kv]
            return same | (q == kv)

        return create_block_mask(mask_mod, None, None, region.numel(), region.numel(), device=device)


ATTENTION_BACKENDS = ("sdpa", "flex")
_compiled_flex = None


def _flex_attention(q: Tensor, k: Tensor, v: Tensor, block_mask) -> Tensor:
    """flex_attention, compiled once per process when called eagerly (its eager form is a slow
    reference implementation); inside a compiled model the compiler fuses it in place."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():
        return flex_attention(q, k, v, block_mask=block_mask)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask)


class WindowSelfAttention(nn.Module):
    """Multi-head self-attention inside 3D windows, optionally shifted by half a window.

    Two kernels compute the same attention (``backend``):

    - ``sdpa`` (default): windows are folded into the head axis, so one
      ``scaled_dot_product_attention`` call covers them all; unshifted, unpadded layouts need no
      mask (the fast kernels apply), shifted or padded ones a dense ``[nW, Wt, Wt]`` mask.
    - ``flex``: layouts that need a mask run flex_attention with a block mask instead (no dense
      mask; GPU kernels skip the masked blocks). Unmasked layouts still take sdpa.
    """

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int, int] | None, shifted: bool, qk_norm: bool,
                 torus: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.torus = torus  # rotary spatial positions on a torus (see torus_rotation)
        self._rotations: dict[tuple, tuple[Tensor, Tensor]] = {}
        self.window = window
        self.shifted = shifted
        self.backend = "sdpa"
        head = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(head, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self._masks: dict[tuple, Any] = {}

    def layout(self, grid: tuple[int, int, int]) -> WindowLayout:
        return WindowLayout.build(grid, self.window, self.shifted)

    def _mask(self, layout: WindowLayout, device, flex: bool):
        key = (layout.grid, str(device), flex)
        if key not in self._masks:
            if flex:
                mask = layout.block_mask(device)
            else:
                mask = layout.mask(device)  # [nW, Wt, Wt]
                if mask is not None:  # [1, nW * n, Wt, Wt] to match windows folded into heads
                    mask = mask[:, None].expand(-1, self.num_heads, -1, -1).reshape(1, -1, *mask.shape[1:])
            self._masks[key] = mask
        return self._masks[key]

    def _rotation(self, lay: WindowLayout, head: int, device, dtype) -> tuple[Tensor, Tensor]:
        key = (lay.grid, head, str(device), dtype)
        if key not in self._rotations:
            cos, sin = torus_rotation(lay, head, device)
            self._rotations[key] = (cos.to(dtype), sin.to(dtype))
        return self._rotations[key]

    def forward(self, x: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """x ``[B, L, D]`` with ``L = F * h * w`` -> ``[B, L, D]``."""
        B, L, D = x.shape
        lay = self.layout(grid)
        (F, h, w), (Fp, hp, wp), (fw, hw, ww) = lay.grid, lay.padded, lay.window
        x = x.view(B, F, h, w, D)  # [B, F, h, w, D]
        if lay.padded != lay.grid:
            x = F_.pad(x, (0, 0, 0, wp - w, 0, hp - h, 0, Fp - F))  # [B, F', h', w', D]
        if any(lay.shift):
            x = torch.roll(x, shifts=tuple(-s for s in lay.shift), dims=(1, 2, 3))
        x = rearrange(x, "b (nf fw) (nh hw) (nw ww) d -> b (nf nh nw) (fw hw ww) d", fw=fw, hw=hw, ww=ww)  # [B, nW, Wt, D]
        rot = self._rotation(lay, D // self.num_heads, x.device, x.dtype) if self.torus else None  # 2 x [nW, Wt, d/2]
        if self.backend == "flex" and lay.needs_mask:
            q, k, v = rearrange(self.qkv(x), "b w t (k n d) -> k b n (w t) d", k=3, n=self.num_heads)  # 3 x [B, n, nW*Wt, d]
            q, k, v = self.q_norm(q), self.k_norm(k), v.contiguous()  # whole 4D tensors, as the compiled kernel needs
            if rot is not None:
                cos, sin = (r.flatten(0, 1) for r in rot)  # [nW*Wt, d/2]
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            o = _flex_attention(q, k, v, self._mask(lay, x.device, flex=True))  # [B, n, nW*Wt, d]
            o = rearrange(o, "b n (w t) d -> b w t (n d)", t=fw * hw * ww)  # [B, nW, Wt, D]
        else:
            q, k, v = rearrange(self.qkv(x), "b w t (k n d) -> k b w n t d", k=3, n=self.num_heads)  # 3 x [B, nW, n, Wt, d]
            q, k = self.q_norm(q), self.k_norm(k)
            if rot is not None:
                cos, sin = (r[:, None] for r in rot)  # [nW, 1, Wt, d/2]
                q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            q, k, v = (rearrange(t, "b w n t d -> b (w n) t d") for t in (q, k, v))  # [B, nW*n, Wt, d]
            o = F_.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(lay, x.device, flex=False))  # [B, nW*n, Wt, d]
            o = rearrange(o, "b (w n) t d -> b w t (n d)", n=self.num_heads)  # [B, nW, Wt, D]
        o = self.proj(o)
        o = rearrange(o, "b (nf nh nw) (fw hw ww) d -> b (nf fw) (nh hw) (nw ww) d",
                      nf=Fp // fw, nh=hp // hw, fw=fw, hw=hw, ww=ww)  # [B, F', h', w', D]
        if any(lay.shift):
            o = torch.roll(o, shifts=lay.shift, dims=(1, 2, 3))
        return o[:, :F, :h, :w].reshape(B, L, D)  # [B, L, D]


def torus_rotation(lay: WindowLayout, head: int, device=None) -> tuple[Tensor, Tensor]:
    """Rotary position angles on a torus for the tokens of ``lay``, in window order: cos and sin
    ``[nW, Wt, head / 2]``.

    The first half of a head's channel pairs turn with the token's row, the second half with its
    column, at whole harmonics of the grid (angle ``2 pi k pos / n``, k = 1 .. n/2), so a query
    and a key score by their offset modulo the grid: the attention cannot tell the border from
    the middle, and moving a frame round the torus by whole tokens moves the output alike.
    Padding tokens get angle 0.
    """
    if head % 4:
        raise ValueError(f"torus positions need a head width divisible by 4, got {head}")
    (F, h, w), (Fp, hp, wp), (fw, hw, ww) = lay.grid, lay.padded, lay.window
    pairs = head // 4

    def angles(n: int, size: int) -> Tensor:  # [size, pairs]: positions beyond n (padding) get 0
        k = 1 + torch.arange(pairs, device=device) % max(1, n // 2)
        pos = torch.arange(size, device=device, dtype=torch.float64)
        a = pos[:, None] * k[None] * (2 * math.pi / n)
        a[n:] = 0
        return a

    ah = angles(h, hp)[None, :, None].expand(Fp, hp, wp, pairs)
    aw = angles(w, wp)[None, None, :].expand(Fp, hp, wp, pairs)
    a = torch.cat([ah, aw], -1)  # [F', h', w', head/2]
    if any(lay.shift):
        a = torch.roll(a, shifts=tuple(-s for s in lay.shift), dims=(0, 1, 2))
    a = rearrange(a, "(nf fw) (nh hw) (nw ww) d -> (nf nh nw) (fw hw ww) d", fw=fw, hw=hw, ww=ww)  # [nW, Wt, head/2]
    return a.cos().float(), a.sin().float()


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Turns channel pairs ``(x[2i], x[2i+1])`` of ``x [..., d]`` by the angles of ``cos``/``sin`` ``[..., d/2]``."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)
