"""Classifier-free guidance as a velocity model: ``v = v_uncond + scale * (v_cond - v_uncond)``.

:class:`Guided` wraps any model of the velocity protocol. Each call runs the conditional and the
unconditional branch in one batched model call (the batch doubled); the unconditional branch
sees the "no text" embedding (no real token: an all-False mask), which is what a model trained
with text dropout learned for the empty prompt, or the wrapped model's ``negative`` prompt
(a :class:`TextEmbedding` ``[1, L, D]``) when it has one. A scale of 1 is the conditional model
itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .conditioning import FrameText, TextEmbedding
from .velocity import ModelWrapper

__all__ = ["Guided"]


class Guided(ModelWrapper):
    """``model`` with classifier-free guidance of strength ``scale`` (count what it evaluates
    with a :class:`~streamdit_core.velocity.CallCounter` around ``model``)."""

    def __init__(self, model, scale: float):
        super().__init__(model)
        if scale < 0:
            raise ValueError(f"guidance scale must be at least 0, got {scale}")
        self.scale = float(scale)
        self._both: tuple = (None, 0, None)  # (text, b, doubled text): a prompt is doubled once

    def forward(self, x: Tensor, sigma: Tensor, text: TextEmbedding | FrameText) -> Tensor:
        """x ``[b, C, F, H, W]``, sigma ``[b, F]``, text with tokens ``[b or 1, L, D]`` (or a
        :class:`FrameText` of such prompts) -> v like x."""
        b = x.shape[0]
        if self._both[0] is text and self._both[1] == b:
            both = self._both[2]
        else:
            negative = self.negative
            if isinstance(text, FrameText):
                both = FrameText(tuple(_with_unconditional(t, b, negative) for t in text.texts), text.index)
            else:
                both = _with_unconditional(text, b, negative)
            self._both = (text, b, both)  # holds ``text``, so its identity stays valid
        v = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), both)  # [2b, C, F, H, W]
        cond, uncond = v[:b], v[b:]
        return uncond + self.scale * (cond - uncond)


def _with_unconditional(text: TextEmbedding, b: int, negative: TextEmbedding | None = None) -> TextEmbedding:
    """``[b or 1, L, D]`` -> ``[2b, L', D]``: the prompt for the first b samples, then no text
    (or ``negative [1, Ln, D]``, both padded to the longer length)."""
    if negative is not None:
        length = max(text.tokens.shape[1], negative.tokens.shape[1])
        negative = negative.to(text.tokens.device, text.tokens.dtype)
        cond, uncond = text.padded(length, b), negative.padded(length, b)
        return TextEmbedding(torch.cat([cond.tokens, uncond.tokens]), torch.cat([cond.mask, uncond.mask]))
    tokens = text.tokens.expand(b, -1, -1) if text.tokens.shape[0] == 1 else text.tokens  # [b, L, D]
    mask = text.real()
    mask = mask.expand(b, -1) if mask.shape[0] == 1 else mask  # [b, L]
    return TextEmbedding(torch.cat([tokens, torch.zeros_like(tokens)]),  # [2b, L, D]
                         torch.cat([mask, torch.zeros_like(mask)]))  # [2b, L]
