"""Fixtures shared by the test suite."""

from __future__ import annotations

import pytest

from helpers import randomized
from streamdit_core import StreamDiT


@pytest.fixture
def tiny_model() -> StreamDiT:
    """The tiny preset with every parameter active (see helpers.randomized)."""
    return randomized()
