"""StreamDiT: an adaLN DiT with a per-frame time embedding and shifted 3D window attention.

Shape glossary (used in every shape comment below):
    B   batch                       C   latent channels
    F   frames in the buffer        H, W  latent height and width
    p   spatial patch size          h, w  token grid (H / p, W / p)
    S   tokens per frame (h * w)    L   tokens in the buffer (F * S)
    D   hidden width                n, d  attention heads and head width (D = n * d)
    Lt  text tokens                 Dt  text encoder width
    nW  windows                     Wt  tokens per window (Fw * Hw * Ww)

The file reads in the order data flows: config and presets, embedders, cross-attention, the
block, the final layer, the model. Window self-attention (3D windows, Swin shift masks, the sdpa
and flex_attention kernels) lives in :mod:`~streamdit_core.attention`. A block is modulate -> window self-attention -> gate -> cross-attention to text
-> modulate -> FFN -> gate, with the shift, scale and gate computed per frame from that frame's
sigma, so one buffer can hold frames at many noise levels.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F_
from einops import rearrange
from torch import Tensor, nn

from .attention import ATTENTION_BACKENDS, WindowSelfAttention
from .conditioning import FrameText, TextEmbedding
from .schedule import SigmaWarp
from .velocity import Geometry

__all__ = ["StreamDiT", "StreamDiTConfig", "Conditioning", "PRESETS", "CLEAN_SIGMA_FLOOR"]

# A clean-prediction model divides by sigma to give velocity; below this it divides by this.
CLEAN_SIGMA_FLOOR = 0.05


# --------------------------------------------------------------------------------------------
# Config and presets
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamDiTConfig:
    """Architecture of a StreamDiT; travels inside every checkpoint as JSON.

    The defaults are the ``tiny`` preset: a model that runs in milliseconds on a CPU, for tests.
    """

    in_channels: int = 4  # latent channels C of the codec the model is paired with
    patch_size: int = 2  # 1 x p x p patches: time is not patched, so a chunk of c frames is c token frames
    hidden_size: int = 32  # D
    depth: int = 2  # blocks; odd-numbered blocks shift their windows
    num_heads: int = 2  # n; head width d = D / n
    mlp_ratio: float = 4.0  # FFN hidden = mlp_ratio * D, as in DiT
    text_dim: int = 32  # Dt, width of the text encoder's token states
    window: tuple[int, int, int] | None = (4, 4, 4)  # [Fw, Hw, Ww] in tokens; None = full attention
    frequency_dim: int = 256  # sinusoidal width of the sigma embedding, as in DiT
    qk_norm: bool = True  # RMSNorm on queries and keys: steadier training at low precision
    buffer_frames: int = 16  # F of the latent buffer the model is built for
    latent_size: tuple[int, int] = (8, 8)  # H, W of that buffer
    sigma_warp: str = "identity"  # the warp the model is trained with (schedule.SigmaWarp.parse)
    # Also add the prompt's pooled token states to every frame's adaLN input, as DiT conditions
    # on its class and SD3 on its pooled text: a global attribute (a color, a shape, a heading)
    # then steers every block's modulation directly instead of only through cross-attention.
    pooled_text: bool = False
    # Torus positions: spatial positions enter only as rotary angles at whole harmonics of the
    # token grid (attention.torus_rotation), not as added features, so the latent frame is a
    # torus: the model treats every place alike, borders included, as a world whose shapes wrap
    # around the borders needs (frame positions stay added features).
    wrap: bool = False
    # What the network's last layer predicts: "velocity" (eps - x0), or "clean" (x0, turned into
    # the velocity (x - x0) / sigma before it leaves the model, so samplers and losses are
    # unchanged while the network itself outputs frames; sigma is floored at CLEAN_SIGMA_FLOOR).
    prediction: str = "velocity"
    # A 3x3 convolution over each output latent frame, added to the unpatchified output (U-ViT
    # does the same): neighbouring patches then agree at their seams instead of each token
    # drawing its own tile. Pads circularly with ``wrap``. Starts at zero (no effect).
    out_conv: bool = False

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"StreamDiTConfig.{field}={getattr(self, field)!r}: {why}")

        for field in ("in_channels", "patch_size", "hidden_size", "depth", "num_heads", "text_dim",
                      "frequency_dim", "buffer_frames"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(field, "must be an integer >= 1")
        if self.hidden_size % self.num_heads:
            raise bad("num_heads", f"must divide hidden_size={self.hidden_size}")
        if (self.hidden_size // self.num_heads) % 2:
            raise bad("num_heads", "must leave an even head width")
        if self.wrap and (self.hidden_size // self.num_heads) % 4:
            raise bad("wrap", "torus positions need a head width (hidden_size / num_heads) divisible by 4")
        if self.frequency_dim % 2:
            raise bad("frequency_dim", "must be even")
        for field in ("pooled_text", "wrap", "out_conv"):
            if not isinstance(getattr(self, field), bool):
                raise bad(field, "must be true or false")
        if self.prediction not in ("velocity", "clean"):
            raise bad("prediction", "must be 'velocity' or 'clean'")
        if not self.mlp_ratio > 0:
            raise bad("mlp_ratio", "must be > 0")
        if self.window is not None:
            window = tuple(self.window)
            if len(window) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in window):
                raise bad("window", "must be three integers >= 1 [Fw, Hw, Ww], or None for full attention")
            object.__setattr__(self, "window", window)
        size = tuple(self.latent_size)
        if len(size) != 2 or any(not isinstance(v, int) or v < 1 or v % self.patch_size for v in size):
            raise bad("latent_size", f"must be two integers divisible by patch_size={self.patch_size}")
        object.__setattr__(self, "latent_size", size)
        try:
            SigmaWarp.parse(self.sigma_warp)
        except ValueError as err:
            raise bad("sigma_warp", str(err)) from None

    @property
    def warp(self) -> SigmaWarp:
        return SigmaWarp.parse(self.sigma_warp)

    @property
    def geometry(self) -> Geometry:
        """The buffer this model is built for (the velocity contract's :class:`Geometry`)."""
        return Geometry(self.buffer_frames, self.in_channels, self.latent_size, self.patch_size, self.warp)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StreamDiTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown StreamDiTConfig fields {unknown}; known fields are {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "StreamDiTConfig":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a StreamDiTConfig is a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    @classmethod
    def preset(cls, name: str) -> "StreamDiTConfig":
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown StreamDiT preset {name!r}; presets: {', '.join(PRESETS)}") from None


PRESETS: dict[str, StreamDiTConfig] = {
    # Milliseconds per call on a CPU: the engine's tests stream thousands of frames with it.
    "tiny": StreamDiTConfig(),
    # The embedded default: the synthetic world's 8 x 8 x 8 latents (64x64 video, 8x spatial
    # codec, one latent per frame) in an 8-frame buffer (0.5 s of 16 fps video), 16 tokens per
    # latent frame, 128 tokens per call; MiniLM's 384-dim token states; windows of 4 latent
    # frames; shift 2 puts more of the schedule at high noise, where color, shape and heading
    # are decided.
    "embedded": StreamDiTConfig(
        in_channels=8,
        patch_size=2,
        hidden_size=128,
        depth=6,
        num_heads=4,
        text_dim=384,
        window=(4, 4, 4),
        buffer_frames=8,
        latent_size=(8, 8),
        sigma_warp="shift:2",
    ),
    # The paper's real-time model: about 4B parameters, 8-channel latents of a 4x8x8 temporal
    # autoencoder, a 16 x 64 x 64 latent buffer (64 frames at 512x512), streamed with c=2, N=8.
    # Width and depth are ours (the paper gives only the total); 16384 tokens per call.
    # The paper does not give its window size; [4, 16, 16] tokens spans two chunks in time.
    "paper-4b": StreamDiTConfig(
        in_channels=8,
        patch_size=2,
        hidden_size=3072,
        depth=20,
        num_heads=24,
        text_dim=4096,
        window=(4, 16, 16),
        buffer_frames=16,
        latent_size=(64, 64),
    ),
}


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning prepared for the blocks by :meth:`StreamDiT.condition`.

    Attributes:
        context: text tokens in model width ``[B, Lt, D]`` (``[B, F, Lt, D]`` per frame), or None.
        mask: bool, like context without D: the tokens each query attends to; None for all.
        keep: ``[B]`` (``[B, F]``): 1, or 0 for a sample (frame) with no text, whose
            cross-attention update is dropped; None when every sample has text.
        pooled: ``[B, D]`` (``[B, F, D]``) added to the sigma embedding, or None.
    """

    context: Tensor | None
    mask: Tensor | None
    keep: Tensor | None
    pooled: Tensor | None

    def tensors(self) -> tuple[Tensor | None, ...]:
        return self.context, self.mask, self.keep, self.pooled


# --------------------------------------------------------------------------------------------
# Embedders
# --------------------------------------------------------------------------------------------

def sigma_embedding(sigma: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of ``1000 * sigma`` (DiT's timestep scale).

    Args:
        sigma: ``[...]``.
    Returns:
        float32 ``[..., dim]``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
    args = 1000.0 * sigma.float()[..., None] * freqs  # [..., half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [..., dim]


class SigmaEmbedder(nn.Module):
    """Per-frame sigma ``[B, F]`` -> embedding ``[B, F, D]``."""

    def __init__(self, hidden_size: int, frequency_dim: int):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, sigma: Tensor) -> Tensor:
        freq = sigma_embedding(sigma, self.frequency_dim).to(self.mlp[0].weight.dtype)  # [B, F, 256]
        return self.mlp(freq)  # [B, F, D]


def sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """``[P]`` positions -> ``[P, dim]`` sin/cos features (dim even)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim // 2))
    args = positions.double()[:, None] * omega  # [P, dim/2]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # [P, dim]


def sincos_3d(grid: tuple[int, int, int], dim: int, device=None, wrap: bool = False) -> Tensor:
    """Fixed 3D position features ``[L, dim]`` for a token grid ``(F, h, w)``.

    Positions count from the buffer's output end (frame 0), not from the start of the stream, so
    an endless stream never leaves the positions the model was trained on. Each axis gets
    ``2 * (dim // 6)`` features; the rest are zero. With ``wrap`` the two spatial axes get none
    (a torus model takes them as rotary angles inside attention instead).
    """
    per_axis = 2 * (dim // 6)
    f, h, w = (torch.arange(n, device=device) for n in grid)
    ef = sincos_1d(f, per_axis)  # [F, a]
    if wrap:
        eh, ew = torch.zeros(grid[1], per_axis, device=device), torch.zeros(grid[2], per_axis, device=device)
    else:
        eh, ew = sincos_1d(h, per_axis), sincos_1d(w, per_axis)  # [h, a], [w, a]
    pos = torch.cat([
        ef[:, None, None].expand(*grid, per_axis),
        eh[None, :, None].expand(*grid, per_axis),
        ew[None, None, :].expand(*grid, per_axis),
    ], dim=-1)  # [F, h, w, 3a]
    pos = F_.pad(pos, (0, dim - 3 * per_axis))  # [F, h, w, D]
    return pos.reshape(-1, dim).float()  # [L, D]


# --------------------------------------------------------------------------------------------
# Cross-attention
# --------------------------------------------------------------------------------------------

class CrossAttention(nn.Module):
    """Video tokens attend to text tokens; padded text tokens are masked out."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool):
        super().__init__()
        self.num_heads = num_heads
        head = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm = nn.RMSNorm(head, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None, keep: Tensor | None) -> Tensor:
        """x ``[B, L, D]``, context ``[B, Lt, D]``, mask bool ``[B, Lt]`` (None: attend to every
        token), keep ``[B]`` (None: all 1) -> ``[B, L, D]``.

        With per-frame text, context is ``[B, F, Lt, D]``, mask ``[B, F, Lt]`` and keep ``[B, F]``:
        the tokens of frame f attend only to frame f's prompt. ``keep`` is 0 for a sample (or
        frame) with no real text token, whose update is then zero (the unconditional branch);
        see :meth:`StreamDiT.condition`, which prepares all three.
        """
        if context.dim() == 4:
            B, L, D = x.shape
            frames = context.shape[1]
            o = self.forward(x.reshape(B * frames, L // frames, D),  # [B*F, S, D]
                             context.flatten(0, 1),  # [B*F, Lt, D]
                             None if mask is None else mask.flatten(0, 1),  # [B*F, Lt]
                             None if keep is None else keep.flatten(0, 1))  # [B*F]
            return o.reshape(B, L, D)  # [B, L, D]
        q = rearrange(self.q(x), "b l (n d) -> b n l d", n=self.num_heads)  # [B, n, L, d]
        k, v = rearrange(self.kv(context), "b t (k n d) -> k b n t d", k=2, n=self.num_heads)  # 2 x [B, n, Lt, d]
        q, k = self.q_norm(q), self.k_norm(k)
        attn_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, Lt]
        o = F_.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, n, L, d]
        o = self.proj(rearrange(o, "b n l d -> b l (n d)"))  # [B, L, D]
        if keep is not None:
            o = o * keep[:, None, None]  # [B, L, D]
        return o


class Mlp(nn.Module):
    """Linear -> GELU (tanh) -> Linear: the blocks' FFN, and the text projection."""

    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F_.gelu(self.fc1(x), approximate="tanh"))  # [..., out]


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------

def modulate(x: Tensor, shift: Tensor, scale: Tensor, frames: int) -> Tensor:
    """Per-frame adaLN: x ``[B, L, D]``, shift and scale ``[B, F, D]`` -> ``[B, L, D]``."""
    B, L, D = x.shape
    x = x.view(B, frames, L // frames, D)  # [B, F, S, D]
    return torch.addcmul(shift[:, :, None], x, 1 + scale[:, :, None]).view(B, L, D)  # one fused kernel


def gate(x: Tensor, g: Tensor, frames: int) -> Tensor:
    """Per-frame gate: x ``[B, L, D]`` times g ``[B, F, D]``."""
    B, L, D = x.shape
    return (x.view(B, frames, L // frames, D) * g[:, :, None]).view(B, L, D)


class StreamDiTBlock(nn.Module):
    """modulate -> window self-attention -> gate -> cross-attention -> modulate -> FFN -> gate."""

    def __init__(self, cfg: StreamDiTConfig, shifted: bool):
        super().__init__()
        D = cfg.hidden_size
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = WindowSelfAttention(D, cfg.num_heads, cfg.window, shifted, cfg.qk_norm, torus=cfg.wrap)
        self.norm2 = nn.LayerNorm(D, eps=1e-6)
        self.cross_attn = CrossAttention(D, cfg.num_heads, cfg.qk_norm)
        self.norm3 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(D, int(D * cfg.mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))

    def forward(self, x: Tensor, t: Tensor, grid: tuple[int, int, int], cond: "Conditioning") -> Tensor:
        """x ``[B, L, D]``, t ``[B, F, D]`` (per-frame sigma embedding) -> ``[B, L, D]``."""
        F = grid[0]
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(t).chunk(6, dim=-1)  # 6 x [B, F, D]
        x = x + gate(self.attn(modulate(self.norm1(x), shift_a, scale_a, F), grid), gate_a, F)
        if cond.context is not None:
            x = x + self.cross_attn(self.norm2(x), cond.context, cond.mask, cond.keep)
        x = x + gate(self.mlp(modulate(self.norm3(x), shift_m, scale_m, F)), gate_m, F)
        return x


class FinalLayer(nn.Module):
    """Per-frame adaLN then a linear map to patches of velocity."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, t: Tensor, frames: int) -> Tensor:
        shift, scale = self.adaLN_modulation(t).chunk(2, dim=-1)  # 2 x [B, F, D]
        return self.linear(modulate(self.norm_final(x), shift, scale, frames))  # [B, L, p*p*C]


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

class StreamDiT(nn.Module):
    """The velocity model ``v = model(x, sigma, text)``.

    Args (forward):
        x: latents ``[B, C, F, H, W]``; frame 0 is the buffer's output end.
        sigma: per-frame noise level ``[B, F]``.
        text: :class:`TextEmbedding` (or bare tokens ``[B, Lt, Dt]``), :class:`FrameText` (a
            prompt per frame), or None for no text.
    Returns:
        velocity ``[B, C, F, H, W]`` in x's dtype.
    """

    def __init__(self, config: StreamDiTConfig | None = None):
        super().__init__()
        cfg = config or StreamDiTConfig()
        self.config = cfg
        D, p = cfg.hidden_size, cfg.patch_size
        self.x_embedder = nn.Linear(cfg.in_channels * p * p, D)
        self.t_embedder = SigmaEmbedder(D, cfg.frequency_dim)
        # Text token states [B, Lt, Dt] -> [B, Lt, D], once per call, shared by every block.
        self.y_embedder = Mlp(cfg.text_dim, D, D)
        # Masked mean of the text token states [B, Dt] -> [B, D], added to the sigma embedding.
        self.pool_embedder = Mlp(cfg.text_dim, D, D) if cfg.pooled_text else None
        self.blocks = nn.ModuleList(StreamDiTBlock(cfg, shifted=i % 2 == 1) for i in range(cfg.depth))
        self.final_layer = FinalLayer(D, p, cfg.in_channels)
        self.out_conv = None
        if cfg.out_conv:
            self.out_conv = nn.Conv3d(cfg.in_channels, cfg.in_channels, (1, 3, 3), padding=(0, 1, 1),
                                      padding_mode="circular" if cfg.wrap else "zeros")
        self._pos: dict[tuple, Tensor] = {}
        self.initialize_weights()

    @property
    def geometry(self) -> Geometry:
        """The velocity contract's :class:`~streamdit_core.velocity.Geometry`: buffer frames,
        channels, latent size, patch and sigma warp, from the config."""
        return self.config.geometry

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "StreamDiT":
        cfg = StreamDiTConfig.preset(name)
        return cls(dataclasses.replace(cfg, **overrides) if overrides else cfg)

    def initialize_weights(self) -> None:
        # Linear layers: Xavier-uniform weights, zero biases (as DiT).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # The sigma MLP starts small and trainable.
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block's shift, scale and gate start at 0, so a new block is the
        # identity; the ungated cross-attention starts at 0 through its output projection.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            nn.init.zeros_(block.cross_attn.proj.weight)
            nn.init.zeros_(block.cross_attn.proj.bias)
        # The pooled text starts with no effect on the modulation.
        if self.pool_embedder is not None:
            nn.init.zeros_(self.pool_embedder.fc2.weight)
        # The output layer starts at zero velocity.
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.out_conv is not None:
            nn.init.zeros_(self.out_conv.weight)
            nn.init.zeros_(self.out_conv.bias)

    def _positions(self, grid: tuple[int, int, int], device, dtype) -> Tensor:
        key = (grid, str(device), dtype)
        if key not in self._pos:
            self._pos[key] = sincos_3d(grid, self.config.hidden_size, device, self.config.wrap).to(dtype)  # [L, D]
        return self._pos[key]

    def _check(self, x: Tensor, sigma: Tensor) -> None:
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be latents [B, C={cfg.in_channels}, F, H, W], got {list(x.shape)}")
        H, W = x.shape[-2:]
        if H % cfg.patch_size or W % cfg.patch_size:
            raise ValueError(f"latent H, W = {H}, {W} must be multiples of patch_size={cfg.patch_size}")
        if tuple(sigma.shape) != (x.shape[0], x.shape[2]):
            raise ValueError(f"sigma must be [B, F] = {[x.shape[0], x.shape[2]]}, got {list(sigma.shape)}")

    def condition(self, text, batch: int, frames: int, device, dtype) -> Conditioning:
        """Text conditioning in the form the blocks use (see :class:`Conditioning`).

        Every decision that depends on the text's values (is any token padding, has a sample
        no text at all) is made here, so :meth:`denoise` runs the same kernels on every call:
        it can be compiled or captured in a CUDA graph, with this run once per prompt.
        """
        if text is None:
            return Conditioning(None, None, None, None)
        if isinstance(text, Tensor):
            text = TextEmbedding(text)
        if isinstance(text, FrameText):
            if text.index.numel() != frames:
                raise ValueError(f"per-frame text has {text.index.numel()} frames, the latents {frames}")
            for t in text.texts:
                self._check_text(t, batch)
            tokens, mask = text.stacked(batch)  # [B, P, Lt, Dt], [B, P, Lt]
            index = text.index.to(device)
            tokens, mask = tokens.to(device=device, dtype=dtype)[:, index], mask.to(device)[:, index]  # [B, F, Lt, Dt], [B, F, Lt]
            all_real = None
        elif isinstance(text, TextEmbedding):
            self._check_text(text, batch)
            all_real = True if text.mask is None else None  # None: look at the mask
            text = text.to(device=device, dtype=dtype)
            tokens, mask = text.tokens.expand(batch, -1, -1), text.real().expand(batch, -1)  # [B, Lt, Dt], [B, Lt]
        else:
            raise TypeError(
                f"text must be a TextEmbedding, a FrameText, a [B, Lt, Dt] tensor or None, got {type(text).__name__}"
            )
        context = self.y_embedder(tokens)  # [B, (F,) Lt, D]
        has_text = mask.any(-1)  # [B, (F,)]
        pooled = None
        if self.pool_embedder is not None:
            weight = mask.to(dtype)[..., None]  # [B, (F,) Lt, 1]
            mean = (tokens * weight).sum(-2) / weight.sum(-2).clamp_min(1)  # [B, (F,) Dt]
            # A prompt with no real token (the unconditional branch) adds nothing.
            pooled = self.pool_embedder(mean) * has_text[..., None].to(dtype)  # [B, (F,) D]
        if all_real or bool(mask.all()):
            return Conditioning(context, None, None, pooled)
        # A prompt with no real token attends to all (zero-weight) tokens, so no softmax row is
        # empty, and its update is multiplied by keep = 0.
        attend = mask | ~has_text[..., None]  # [B, (F,) Lt]
        keep = None if bool(has_text.all()) else has_text.to(dtype)  # [B, (F,)]
        return Conditioning(context, attend, keep, pooled)

    def _check_text(self, text: TextEmbedding, batch: int) -> None:
        if text.tokens.shape[-1] != self.config.text_dim:
            raise ValueError(f"text tokens must have width Dt={self.config.text_dim}, got {list(text.tokens.shape)}")
        if text.tokens.shape[0] not in (1, batch):
            raise ValueError(f"text batch {text.tokens.shape[0]} does not match latent batch {batch} (or 1)")

    def set_attention(self, backend: str) -> "StreamDiT":
        """Chooses the window attention kernel of every block (see :class:`WindowSelfAttention`)."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(ATTENTION_BACKENDS)}")
        for block in self.blocks:
            block.attn.backend = backend
        return self

    def forward(self, x: Tensor, sigma: Tensor, text: TextEmbedding | Tensor | None = None) -> Tensor:
        self._check(x, sigma)
        B, C, F, H, W = x.shape
        cond = self.condition(text, B, F, x.device, self.x_embedder.weight.dtype)
        return self.denoise(x, sigma, cond)

    def denoise(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """The network itself: latents ``[B, C, F, H, W]``, sigma ``[B, F]`` and prepared text
        -> velocity like x. Its kernels depend only on shapes, never on values."""
        cfg = self.config
        p = cfg.patch_size
        dtype = self.x_embedder.weight.dtype
        B, C, F, H, W = x.shape
        grid = (F, H // p, W // p)
        tokens = rearrange(x.to(dtype), "b c f (h p) (w q) -> b (f h w) (c p q)", p=p, q=p)  # [B, L, C*p*p]
        h = self.x_embedder(tokens) + self._positions(grid, x.device, dtype)  # [B, L, D]
        t = self.t_embedder(sigma.to(x.device))  # [B, F, D]
        if cond.pooled is not None:
            pooled = cond.pooled
            t = t + (pooled if pooled.dim() == 3 else pooled[:, None, :])  # [B, F, D]
        for block in self.blocks:
            h = block(h, t, grid, cond)  # [B, L, D]
        out = self.final_layer(h, t, F)  # [B, L, p*p*C]
        v = rearrange(out, "b (f h w) (c p q) -> b c f (h p) (w q)", f=F, h=grid[1], w=grid[2], p=p, q=p)  # [B, C, F, H, W]
        if self.out_conv is not None:
            v = v + self.out_conv(v)
        if cfg.prediction == "clean":  # the network predicts the clean frames; the model returns velocity
            floor = sigma.to(v).clamp_min(CLEAN_SIGMA_FLOOR)[:, None, :, None, None]  # [B, 1, F, 1, 1]
            v = (x.to(v) - v) / floor
        return v.to(x.dtype)
