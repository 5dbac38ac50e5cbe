"""What a velocity model is conditioned on: text as token states, one prompt or one per frame.

- :class:`TextEmbedding`: token states ``[B, Lt, Dt]`` and their padding mask; a prompt.
- :class:`FrameText`: a prompt per latent frame of the buffer (streams switching prompts chunk by
  chunk hand one to the model until the frames from before the switch have left).

Text encoders (:mod:`streamdit_core.text`, a host's CLIP) produce them; streams pass them to the
model untouched; a model turns them into whatever its blocks use (for our DiT,
:meth:`~streamdit_core.model.StreamDiT.condition`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F_
from torch import Tensor

__all__ = ["TextEmbedding", "FrameText", "per_prompt"]


@dataclass(frozen=True)
class TextEmbedding:
    """Text conditioning: token states and their padding mask.

    Attributes:
        tokens: ``[B, Lt, Dt]`` (``B = 1`` broadcasts over the latent batch).
        mask: bool ``[B, Lt]``, True for real tokens; None means every token is real.
    """

    tokens: Tensor
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.tokens.dim() != 3:
            raise ValueError(f"text tokens must be [B, Lt, Dt], got {list(self.tokens.shape)}")
        if self.mask is not None and tuple(self.mask.shape) != tuple(self.tokens.shape[:2]):
            raise ValueError(
                f"text mask must be [B, Lt] = {list(self.tokens.shape[:2])}, got {list(self.mask.shape)}"
            )

    def to(self, device=None, dtype=None) -> "TextEmbedding":
        mask = None if self.mask is None else self.mask.to(device=device, dtype=torch.bool)
        return TextEmbedding(self.tokens.to(device=device, dtype=dtype), mask)

    def real(self) -> Tensor:
        """bool ``[B, Lt]``: the mask, or all True when there is none."""
        if self.mask is not None:
            return self.mask
        return torch.ones(self.tokens.shape[:2], dtype=torch.bool, device=self.tokens.device)

    def padded(self, length: int, batch: int | None = None) -> "TextEmbedding":
        """The same prompts over ``length >= Lt`` tokens (padding is zero and masked),
        broadcast to ``batch`` when given."""
        tokens, mask = self.tokens, self.real()
        extra = length - tokens.shape[1]
        if extra < 0:
            raise ValueError(f"cannot pad {tokens.shape[1]} text tokens down to {length}")
        tokens = F_.pad(tokens * mask[..., None].to(tokens.dtype), (0, 0, 0, extra))  # [B, length, Dt]
        mask = F_.pad(mask, (0, extra))  # [B, length]
        if batch is not None:
            tokens, mask = tokens.expand(batch, -1, -1), mask.expand(batch, -1)
        return TextEmbedding(tokens, mask)

    def select(self, index: Tensor) -> "TextEmbedding":
        """The prompts of the samples ``index`` picks (a bool mask or indices over the batch); a
        single prompt broadcast over the batch (``B = 1``) stays as it is."""
        if self.tokens.shape[0] == 1:
            return self
        index = index.to(self.tokens.device)
        return TextEmbedding(self.tokens[index], None if self.mask is None else self.mask[index])

    def lerp(self, other: "TextEmbedding", weight: float) -> "TextEmbedding":
        """A prompt blend: token states ``(1 - weight) * self + weight * other`` over the union
        of both prompts' real tokens (padding counts as zero); for gradual prompt switches."""
        length = max(self.tokens.shape[1], other.tokens.shape[1])
        batch = max(self.tokens.shape[0], other.tokens.shape[0])
        a, b = self.padded(length, batch), other.padded(length, batch)
        return TextEmbedding(torch.lerp(a.tokens, b.tokens.to(a.tokens), float(weight)), a.mask | b.mask)


@dataclass(frozen=True)
class FrameText:
    """Per-frame text conditioning: each latent frame attends to its own prompt.

    Streams switch prompts chunk by chunk with it: the frames that entered the buffer before a
    switch keep the old prompt while the new one conditions only the chunks entering after it.

    Attributes:
        texts: the distinct prompts, each a :class:`TextEmbedding` ``[B or 1, Lt_i, Dt]``.
        index: int64 ``[F]``: which of ``texts`` conditions each frame of the buffer.
    """

    texts: tuple[TextEmbedding, ...]
    index: Tensor

    def __post_init__(self) -> None:
        if not self.texts or not all(isinstance(t, TextEmbedding) for t in self.texts):
            raise TypeError("FrameText needs one or more TextEmbedding prompts")
        if self.index.dim() != 1 or self.index.dtype != torch.int64:
            raise ValueError(f"FrameText index must be int64 [F], got {self.index.dtype} {list(self.index.shape)}")
        if self.index.numel() and not 0 <= int(self.index.min()) <= int(self.index.max()) < len(self.texts):
            raise ValueError(f"FrameText index must lie in 0..{len(self.texts) - 1}, got {self.index.tolist()}")

    @classmethod
    def of_frames(cls, per_frame: Sequence[TextEmbedding]) -> "FrameText":
        """From one prompt per frame; the same object given twice is stored once."""
        texts: list[TextEmbedding] = []
        index = []
        for text in per_frame:
            at = next((i for i, t in enumerate(texts) if t is text), None)
            if at is None:
                texts.append(text)
                at = len(texts) - 1
            index.append(at)
        return cls(tuple(texts), torch.tensor(index, dtype=torch.int64))

    def to(self, device=None, dtype=None) -> "FrameText":
        return FrameText(tuple(t.to(device=device, dtype=dtype) for t in self.texts), self.index)

    def select(self, index: Tensor) -> "FrameText":
        """The same frames' prompts for the samples ``index`` picks (see :meth:`TextEmbedding.select`)."""
        return FrameText(tuple(t.select(index) for t in self.texts), self.index)

    def stacked(self, batch: int) -> tuple[Tensor, Tensor]:
        """All prompts padded to one length: tokens ``[batch, P, Lt, Dt]``, mask ``[batch, P, Lt]``."""
        length = max(t.tokens.shape[1] for t in self.texts)
        padded = [t.padded(length, batch) for t in self.texts]
        return torch.stack([t.tokens for t in padded], dim=1), torch.stack([t.mask for t in padded], dim=1)


def per_prompt(call, x: Tensor, sigma: Tensor, text: "TextEmbedding | FrameText") -> Tensor:
    """Conditions a model that takes one prompt per call on :class:`FrameText` as well.

    ``call(x, sigma, TextEmbedding) -> v`` runs once per distinct prompt the frames use, and each
    frame of the result takes the output of its own prompt; a :class:`TextEmbedding` is one call.
    Shapes: x and v ``[B, C, F, H, W]``, sigma ``[B, F]``.
    """
    if not isinstance(text, FrameText):
        return call(x, sigma, text)
    v = None
    for i, prompt in enumerate(text.texts):
        frames = (text.index == i).nonzero()[:, 0].to(x.device)  # [f]
        if frames.numel():
            out = call(x, sigma, prompt)
            v = torch.empty_like(out) if v is None else v
            v[:, :, frames] = out[:, :, frames]
    if v is None:
        raise ValueError("FrameText selects no frame")
    return v
