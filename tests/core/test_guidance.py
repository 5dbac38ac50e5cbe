"""Classifier-free guidance: the formula, one batched call per step, and the no-text branch."""

import pytest
import torch

from helpers import random_text, randomized
from streamdit_core.guidance import Guided
from streamdit_core.velocity import CallCounter
from streamdit_core.conditioning import TextEmbedding


def test_scale_one_is_the_conditional_model_and_zero_the_unconditional():
    model = randomized()
    x, sigma = torch.randn(2, 4, 16, 8, 8), torch.rand(2, 16)
    text = random_text(batch=2)
    none = TextEmbedding(torch.zeros_like(text.tokens), torch.zeros_like(text.mask))
    with torch.no_grad():
        cond, uncond = model(x, sigma, text), model(x, sigma, none)
        assert torch.allclose(Guided(model, 1.0)(x, sigma, text), cond, atol=1e-5)
        assert torch.allclose(Guided(model, 0.0)(x, sigma, text), uncond, atol=1e-5)
        guided = Guided(model, 3.0)(x, sigma, text)
    assert torch.allclose(guided, uncond + 3.0 * (cond - uncond), atol=1e-4)
    assert not torch.allclose(cond, uncond, atol=1e-3)  # the text really matters to this model


def test_each_guided_step_is_one_batched_model_call():
    model = randomized()
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    counted = CallCounter(model)
    g = Guided(counted, 2.0)
    with torch.no_grad():
        g(torch.randn(3, 4, 16, 8, 8), torch.rand(3, 16), random_text(batch=1))
    assert seen == [6] and (counted.calls, counted.samples) == (1, 6)  # 3 streams, two branches each
    assert g.geometry == model.geometry and g.config is model.config  # the wrapper forwards the contract


def test_negative_scale_is_refused():
    with pytest.raises(ValueError, match="at least 0"):
        Guided(randomized(), -1.0)
