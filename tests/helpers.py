"""Helpers shared by the tests (importable because pyproject puts tests/ on the path)."""

from __future__ import annotations

import torch

from streamdit_core import StreamDiT, StreamDiTConfig, TextEmbedding


def randomized(config: StreamDiTConfig | None = None, seed: int = 0, scale: float = 0.05) -> StreamDiT:
    """A model whose zero-initialised parts (adaLN-Zero gates, output layer) are switched on.

    A freshly initialised StreamDiT predicts v = 0 everywhere, which would make most checks
    vacuous; small random offsets on every parameter give a generic nonlinear field.
    """
    torch.manual_seed(seed)
    model = StreamDiT(config or StreamDiTConfig())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def random_text(batch: int = 1, length: int = 6, dim: int = 32, seed: int = 0, real: int | None = None) -> TextEmbedding:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, dim, generator=gen)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, : (length if real is None else real)] = True
    return TextEmbedding(tokens, mask)
