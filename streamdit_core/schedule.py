"""The noise convention, sigma warps, buffer partitions and training noise.

Noise convention (the only place it is written; ``tests/core/test_schedule.py`` pins it)::

    sigma in [0, 1]: 1 is pure noise, 0 is clean data
    x_sigma = (1 - sigma) * x0 + sigma * eps            eps ~ N(0, I)
    v       = eps - x0                                  the model predicts v
    Euler:    x_{sigma - d} = x_sigma - d * v
    x0_hat  = x_sigma - sigma * v

This is the convention of ComfyUI, SD3 and Wan, so ComfyUI sigmas pass through unchanged.
StreamDiT's paper writes t = 1 - sigma.

A warp is a monotone map of [0, 1] onto itself that fixes 0 and 1. Schedules are laid out on a
uniform grid ``u`` and then warped, ``sigma = warp(u)``, identically for training noise and for
inference, so a model trained with a warp is sampled on the same sigmas it saw.

A buffer of ``B`` latent frames is partitioned into ``K`` clean reference frames followed by ``N``
chunks of ``c`` frames (``B = K + N * c``); frame 0 is the output end. Chunk ``j`` (0 = oldest)
lives in the band ``u in [j/N, (j+1)/N]`` and takes ``s`` micro steps per band, so a frame
passes ``T = s * N`` noise levels between entering at ``u = 1`` and leaving at ``u = 0``.

Shapes: sigma ``[B, F]`` (batch, frames) throughout; latents ``[B, C, F, H, W]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import torch
from torch import Tensor

__all__ = [
    "SigmaWarp",
    "Partition",
    "MixedPartitions",
    "TrainingNoise",
    "add_noise",
    "velocity_target",
    "predict_x0",
    "euler_step",
    "chunk_sigma_table",
    "frame_sigma_table",
    "sample_chunk_sigma",
]


# --------------------------------------------------------------------------------------------
# The convention
# --------------------------------------------------------------------------------------------

def _per_frame(sigma: Tensor, x: Tensor) -> Tensor:
    """Broadcasts sigma ``[B, F]`` over latents ``[B, C, F, H, W]``; a scalar passes through."""
    if sigma.dim() == 0:
        return sigma
    if sigma.dim() != 2 or x.dim() != 5 or sigma.shape[1] != x.shape[2]:
        raise ValueError(
            f"sigma must be [B, F] matching latents [B, C, F, H, W]; got sigma {tuple(sigma.shape)} "
            f"for latents {tuple(x.shape)}"
        )
    return sigma[:, None, :, None, None]  # [B, 1, F, 1, 1]


def add_noise(x0: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
    """``x_sigma = (1 - sigma) x0 + sigma eps`` with a per-frame sigma ``[B, F]`` (or a scalar)."""
    s = _per_frame(sigma, x0)
    return (1 - s) * x0 + s * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """The flow-matching target ``v = eps - x0``."""
    return eps - x0


def predict_x0(x: Tensor, v: Tensor, sigma: Tensor) -> Tensor:
    """The clean estimate ``x0_hat = x_sigma - sigma v``."""
    return x - _per_frame(sigma, x) * v


def euler_step(x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """One Euler step from ``sigma`` to ``sigma_next``: ``x - (sigma - sigma_next) v``.

    Each frame moves by its own ``d = sigma - sigma_next``; frames with ``d = 0`` (clean
    reference frames) come back bit-identical.
    """
    d = _per_frame(sigma - sigma_next, x)
    return x - d * v


# --------------------------------------------------------------------------------------------
# Warps
# --------------------------------------------------------------------------------------------

_WARPS = ("identity", "power", "shift")


@dataclass(frozen=True)
class SigmaWarp:
    """A monotone map of ``[0, 1]`` onto itself, applied to a uniform grid to get sigmas.

    Attributes:
        kind: ``"identity"``; ``"power"``: ``sigma = u ** value``; ``"shift"``: the ComfyUI / SD3 /
            Wan shift ``sigma = value * u / (1 + (value - 1) * u)`` (``value > 1`` spends more
            steps at high noise, which larger frames need).
        value: the exponent or the shift; ignored for identity.
    """

    kind: str = "identity"
    value: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in _WARPS:
            raise ValueError(f"unknown sigma warp {self.kind!r}; choose one of {', '.join(_WARPS)}")
        if not (isinstance(self.value, (int, float)) and math.isfinite(self.value) and self.value > 0):
            raise ValueError(f"sigma warp {self.kind!r} needs a finite value > 0, got {self.value!r}")

    @classmethod
    def identity(cls) -> "SigmaWarp":
        return cls("identity", 1.0)

    @classmethod
    def power(cls, exponent: float) -> "SigmaWarp":
        return cls("power", float(exponent))

    @classmethod
    def shift(cls, shift: float) -> "SigmaWarp":
        return cls("shift", float(shift))

    @classmethod
    def parse(cls, text: str) -> "SigmaWarp":
        """Reads ``"identity"``, ``"power:2"`` or ``"shift:3"`` (the form ``str()`` writes)."""
        kind, _, value = text.strip().partition(":")
        if kind == "identity" and not value:
            return cls.identity()
        try:
            return cls(kind, float(value))
        except ValueError as err:
            raise ValueError(
                f"cannot read sigma warp {text!r}: {err}. Write identity, power:P or shift:S"
            ) from None

    def __str__(self) -> str:
        return "identity" if self.kind == "identity" else f"{self.kind}:{self.value:g}"

    def __call__(self, u):
        """Warps a float or a tensor of grid positions in ``[0, 1]``."""
        if self.kind == "identity":
            return u
        if self.kind == "power":
            return u ** self.value
        return self.value * u / (1 + (self.value - 1) * u)


IDENTITY = SigmaWarp.identity()


# --------------------------------------------------------------------------------------------
# Partitions
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Partition:
    """``K`` clean reference frames and ``N`` chunks of ``c`` frames, ``s`` micro steps per chunk.

    ``B = K + N * c`` frames in the buffer, ``T = s * N`` noise levels in a frame's life.
    """

    K: int
    N: int
    c: int
    s: int

    def __post_init__(self) -> None:
        bad = [
            f"{name}={value!r}"
            for name, value, low in (("K", self.K, 0), ("N", self.N, 1), ("c", self.c, 1), ("s", self.s, 1))
            if isinstance(value, bool) or not isinstance(value, int) or value < low
        ]
        if bad:
            raise ValueError(
                f"invalid partition {', '.join(bad)}: K (reference frames) must be an integer >= 0, "
                "N (chunks), c (frames per chunk) and s (micro steps per chunk) integers >= 1"
            )

    @property
    def B(self) -> int:
        """Frames in the buffer."""
        return self.K + self.N * self.c

    @property
    def T(self) -> int:
        """Model calls a frame takes from pure noise to clean."""
        return self.s * self.N

    @classmethod
    def uniform(cls, B: int, T: int) -> "Partition":
        """Ordinary text-to-video: one chunk of the whole buffer, ``T`` steps (c = B, s = T)."""
        return cls(K=0, N=1, c=B, s=T)

    @classmethod
    def diagonal(cls, B: int, K: int = 0) -> "Partition":
        """FIFO-style: every frame its own chunk, one step per chunk (c = 1, s = 1)."""
        if B - K < 1:
            raise ValueError(f"diagonal partition needs B > K, got B={B}, K={K}")
        return cls(K=K, N=B - K, c=1, s=1)

    @classmethod
    def streamdit(cls, B: int, c: int, s: int | None = None, *, T: int | None = None, K: int = 0) -> "Partition":
        """The StreamDiT form: ``N = (B - K) / c`` chunks of ``c`` frames.

        Give ``s`` (micro steps per chunk, default 1) or ``T`` (total steps, ``s = T / N``).
        """
        if s is not None and T is not None:
            raise ValueError(f"give s or T, not both (got s={s}, T={T})")
        if c < 1 or B - K < c or (B - K) % c:
            raise ValueError(
                f"B={B} with K={K} reference frames leaves {B - K} frames, which chunk size c={c} "
                "does not divide into whole chunks; choose c dividing B - K"
            )
        N = (B - K) // c
        if T is not None:
            if T < N or T % N:
                raise ValueError(
                    f"T={T} total steps do not split evenly over N={N} chunks (B={B}, K={K}, c={c}); "
                    f"choose T as a multiple of {N}"
                )
            s = T // N
        return cls(K=K, N=N, c=c, s=1 if s is None else s)

    def __str__(self) -> str:
        return f"K={self.K} N={self.N} c={self.c} s={self.s} (B={self.B}, T={self.T})"


def chunk_sigma_table(partition: Partition, warp: SigmaWarp = IDENTITY, scale: float = 1.0) -> Tensor:
    """Sigma of every chunk before every micro step of a cycle.

    Row ``m`` (``0..s``) holds each chunk's sigma before micro step ``m``; row ``s`` is where the
    cycle ends, one band lower, so chunk 0 is clean and leaves. On the uniform grid chunk ``j``
    sits at ``u = ((j + 1) s - m) / (s N)``; ``scale`` (a video-to-video strength) shrinks the
    grid to ``[0, scale]`` before the warp.

    Returns:
        float64 ``[s + 1, N]``.
    """
    if not 0 < scale <= 1:
        raise ValueError(f"sigma scale (strength) must be in (0, 1], got {scale}")
    s, N = partition.s, partition.N
    m = torch.arange(s + 1, dtype=torch.float64)[:, None]  # [s+1, 1]
    j = torch.arange(N, dtype=torch.float64)[None, :]  # [1, N]
    u = ((j + 1) * s - m) / (s * N)  # [s+1, N]
    return warp(u * scale)


def frame_sigma_table(partition: Partition, warp: SigmaWarp = IDENTITY, scale: float = 1.0) -> Tensor:
    """:func:`chunk_sigma_table` spread over the buffer's frames, reference frames at 0.

    Returns:
        float64 ``[s + 1, B]``; frame 0 is the output end.
    """
    chunks = chunk_sigma_table(partition, warp, scale).repeat_interleave(partition.c, dim=1)  # [s+1, N*c]
    refs = chunks.new_zeros(partition.s + 1, partition.K)  # [s+1, K]
    return torch.cat([refs, chunks], dim=1)  # [s+1, B]


# --------------------------------------------------------------------------------------------
# Training noise
# --------------------------------------------------------------------------------------------

def _uniform(shape, generator: torch.Generator | None) -> Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def _chunk_levels(index: Tensor, chunks: Tensor, generator: torch.Generator | None) -> Tensor:
    """The paper's Eq. 8 on the uniform grid: a frame of chunk ``j`` (of ``n``) gets
    ``u ~ U[j/n, (j+1)/n]``, one draw shared by the chunk's frames.

    Args:
        index: int64 ``[batch, frames]``, the chunk of every streamed frame.
        chunks: ``[batch, 1]``, each sample's chunk count ``n``.
    Returns:
        float64 ``[batch, frames]``, before the warp.
    """
    r = _uniform(index.shape, generator).gather(1, index)  # [batch, frames], shared per chunk
    return (index.double() + r) / chunks.double()


def sample_chunk_sigma(
    partition: Partition,
    batch: int,
    generator: torch.Generator | None = None,
    warp: SigmaWarp = IDENTITY,
) -> Tensor:
    """Per-frame training sigma for one partition (the paper's Eq. 8).

    Chunk ``j`` draws ``u ~ U[j/N, (j+1)/N]``, shared by its ``c`` frames, then ``sigma = warp(u)``;
    reference frames get 0. Drawn on the CPU from ``generator``.

    Returns:
        float32 ``[batch, B]``.
    """
    frames = partition.N * partition.c
    index = (torch.arange(frames) // partition.c).expand(batch, frames)  # [batch, N*c]
    sigma = warp(_chunk_levels(index, torch.full((batch, 1), partition.N), generator))  # [batch, N*c]
    refs = sigma.new_zeros(batch, partition.K)  # [batch, K]
    return torch.cat([refs, sigma], dim=1).float()  # [batch, B]


@dataclass(frozen=True)
class TrainingNoise:
    """A batch of per-frame training sigmas and the scheme each sample drew.

    Attributes:
        sigma: float32 ``[batch, B]``.
        chunk_size: int64 ``[batch]``, frames per chunk for each sample (``B`` for the uniform scheme).
        references: int64 ``[batch]``, clean reference frames of each sample (0 for the uniform
            scheme); None where the sampler has no references to report.
    """

    sigma: Tensor
    chunk_size: Tensor
    references: Tensor | None = None


def _power_of_two_chunks(frames: int) -> tuple[int, ...]:
    sizes = [1 << k for k in range(frames.bit_length()) if frames % (1 << k) == 0]
    return tuple(sorted(set(sizes) | {frames}))


@dataclass(frozen=True)
class MixedPartitions:
    """The mixed-scheme training sampler.

    Each sample draws a partition: with probability ``uniform_ratio`` the uniform (text-to-video)
    scheme, one sigma for the whole buffer; otherwise a reference count uniformly from ``K`` (when
    it names several), a chunk size uniformly from those in ``chunk_sizes`` that divide
    ``B - K``, then Eq. 8 noise for that partition. ``c = B - K`` in the set is the uniform scheme
    too, so the default set already trains plain text-to-video one draw in five.

    Attributes:
        B: frames in the buffer.
        chunk_sizes: chunk sizes to mix. Each must divide ``B - K`` for some K of the mix, and
            every K needs one. Default: the powers of two dividing ``B - K`` and ``B - K`` itself,
            which for ``B = 16``, K = 0 is the paper's best mix {1, 2, 4, 8, 16}.
        uniform_ratio: extra probability of the uniform scheme, in ``[0, 1]``.
        K: clean reference frames kept at sigma 0 in the chunked schemes, or a tuple of counts to
            mix (e.g. ``(0, 2)``: a model that streams with and without reference frames).
    """

    B: int = 16
    chunk_sizes: tuple[int, ...] | None = None
    uniform_ratio: float = 0.0
    K: int | tuple[int, ...] = 0

    def __post_init__(self) -> None:
        counts = (self.K,) if isinstance(self.K, int) else tuple(self.K)
        if not counts or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 or k >= self.B
                             for k in counts):
            raise ValueError(f"mixed partitions need 0 <= K < B, got B={self.B}, K={self.K}")
        counts = tuple(sorted(set(counts)))
        sizes = {k: _power_of_two_chunks(self.B - k) for k in counts} if self.chunk_sizes is None else None
        if sizes is None:
            given = tuple(self.chunk_sizes)
            bad = [c for c in given if not isinstance(c, int) or c < 1 or all((self.B - k) % c for k in counts)]
            sizes = {k: tuple(c for c in given if c not in bad and (self.B - k) % c == 0) for k in counts}
            lacking = [k for k in counts if not sizes[k]]
            if not given or bad or lacking:
                raise ValueError(
                    f"chunk sizes {bad or list(given)} do not divide the {', '.join(str(self.B - k) for k in lacking or counts)} "
                    f"streamed frames (B={self.B}, K={self.K}); use sizes that divide B - K"
                )
        if not 0.0 <= self.uniform_ratio <= 1.0:
            raise ValueError(f"uniform_ratio must be in [0, 1], got {self.uniform_ratio}")
        object.__setattr__(self, "K", counts[0] if len(counts) == 1 else counts)
        object.__setattr__(self, "chunk_sizes", tuple(sorted({c for v in sizes.values() for c in v})))
        object.__setattr__(self, "_sizes", {k: tuple(sorted(set(v))) for k, v in sizes.items()})

    @property
    def reference_counts(self) -> tuple[int, ...]:
        """The K values of the mix."""
        return tuple(self._sizes)

    @property
    def partitions(self) -> tuple[Partition, ...]:
        """The chunked partitions in the mix (``s = 1``; training noise does not depend on ``s``)."""
        return tuple(Partition.streamdit(self.B, c, K=k) for k, sizes in self._sizes.items() for c in sizes)

    def sample(
        self, batch: int, generator: torch.Generator | None = None, warp: SigmaWarp = IDENTITY
    ) -> TrainingNoise:
        """Draws a scheme per sample and its per-frame sigma.

        Returns:
            :class:`TrainingNoise` with sigma ``[batch, B]``.
        """
        counts = self.reference_counts
        which = torch.randint(len(counts), (batch,), generator=generator) if len(counts) > 1 else torch.zeros(batch, dtype=torch.int64)
        groups = [(k, (which == i).nonzero().flatten()) for i, k in enumerate(counts)]
        chunk = torch.zeros(batch, dtype=torch.int64)
        for k, rows in groups:  # a chunk size per sample, from those its K allows
            sizes = torch.tensor(self._sizes[k], dtype=torch.int64)
            chunk[rows] = sizes[torch.randint(len(sizes), (len(rows),), generator=generator)]
        uniform = _uniform((batch,), generator) < self.uniform_ratio  # [batch]
        sigma = torch.zeros(batch, self.B, dtype=torch.float64)
        for k, rows in groups:
            frames = self.B - k
            # Per-sample chunk index of every streamed frame and the sample's chunk count.
            index = torch.arange(frames)[None, :] // chunk[rows][:, None]  # [rows, frames]
            u = _chunk_levels(index, (frames // chunk[rows])[:, None], generator)  # [rows, frames]
            sigma[rows, k:] = warp(u)  # references stay at 0
        # The uniform scheme: one level for all B frames, references included.
        flat = warp(_uniform((batch, 1), generator)).expand(batch, self.B)  # [batch, B]
        sigma = torch.where(uniform[:, None], flat, sigma)
        chunk = torch.where(uniform, torch.full_like(chunk, self.B), chunk)
        refs = torch.tensor(counts, dtype=torch.int64)[which].masked_fill(uniform, 0)
        return TrainingNoise(sigma=sigma.float(), chunk_size=chunk, references=refs)
