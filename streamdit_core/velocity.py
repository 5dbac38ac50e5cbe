"""The contracts: what streams, training and distillation need of a model and of a codec.

A **velocity model** is called ``model(x, sigma, text) -> v``:

- ``x``: latents ``[B, C, F, H, W]``; frame 0 is the buffer's output end.
- ``sigma``: one noise level per frame ``[B, F]`` (the convention of :mod:`~streamdit_core.schedule`).
- ``text``: conditioning handed over untouched (:mod:`~streamdit_core.conditioning`), or None.
- ``v``: the flow-matching velocity ``eps - x0``, like x.

Anything that fits the call can be streamed (:class:`~streamdit_core.stream.Streamer` needs
nothing else: an analytic field, a test double). A model a :class:`~streamdit_core.pipeline.Pipeline`
loads also states its :class:`Geometry` (the buffer it was built for), as
:class:`VelocityModel` says; our :class:`~streamdit_core.model.StreamDiT` and the ComfyUI Wan
adapter both do.

A **codec** (:class:`Codec`) maps video ``[b, 3, T, H, W]`` in 0..1 to latents
``[b, C, T / time_factor, H / space_factor, W / space_factor]`` and back, and decodes a chunk
behind the latents before it (``decode_with_context``), so chunk-by-chunk decoding has no seams.

Wrappers (guidance, hooks, counters) derive from :class:`ModelWrapper`, which forwards the
wrapped model's geometry and what hosts attach to it; :func:`placement` is the one rule for where
a model runs and what dtype its stream buffer has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .schedule import SigmaWarp

__all__ = ["Geometry", "VelocityModel", "Codec", "ModelWrapper", "CallCounter", "geometry_of", "placement"]


@dataclass(frozen=True)
class Geometry:
    """The buffer a velocity model is built for.

    Attributes:
        buffer_frames: latent frames ``B`` in the moving buffer.
        in_channels: latent channels ``C``.
        latent_size: ``(H, W)`` of a latent frame at the model's own size.
        patch_size: spatial patch of the network: latent sizes are multiples of it.
        warp: the sigma warp the model was trained with (streams sample on it).
    """

    buffer_frames: int
    in_channels: int
    latent_size: tuple[int, int]
    patch_size: int
    warp: SigmaWarp

    def __post_init__(self) -> None:
        size = tuple(int(n) for n in self.latent_size)
        object.__setattr__(self, "latent_size", size)
        for name, value in (("buffer_frames", self.buffer_frames), ("in_channels", self.in_channels),
                            ("patch_size", self.patch_size), ("latent_size", min(size, default=0))):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Geometry.{name} must be positive integers, got {getattr(self, name)!r}")
        if len(size) != 2:
            raise ValueError(f"Geometry.latent_size must be (H, W), got {self.latent_size!r}")


@runtime_checkable
class VelocityModel(Protocol):
    """A velocity model with its geometry (see the module docstring)."""

    @property
    def geometry(self) -> Geometry: ...

    def __call__(self, x: Tensor, sigma: Tensor, text: Any) -> Tensor: ...


@runtime_checkable
class Codec(Protocol):
    """What streams need from a latent codec.

    Attributes:
        latent_channels: ``C`` of the latents.
        time_factor: video frames per latent frame.
        space_factor: pixels per latent pixel, per side.
        context: latent frames of left context ``decode_with_context`` takes (0: none needed).
    """

    latent_channels: int
    time_factor: int
    space_factor: int
    context: int

    def encode(self, video: Tensor) -> Tensor:
        """``[b, 3, T, H, W]`` in 0..1 -> latents ``[b, C, T / time_factor, h, w]``."""
        ...

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[b, C, F, h, w]`` -> video ``[b, 3, F * time_factor, H, W]`` in 0..1."""
        ...

    def decode_with_context(self, context: Tensor, latents: Tensor) -> Tensor:
        """The frames of ``latents`` only, decoded behind ``context`` ``[b, C, k, h, w]`` (the
        previous chunk's last latents): what decoding both at once gives for ``latents``."""
        ...


def geometry_of(model: Any) -> Geometry | None:
    """A model's :class:`Geometry`, or None for a bare velocity field."""
    geometry = getattr(model, "geometry", None)
    return geometry if isinstance(geometry, Geometry) else None


class ModelWrapper(nn.Module):
    """A velocity model around another (``inner``): forwards the inner model's geometry, its
    ``config``, its ``negative`` prompt and the ``device`` a host model names, so a wrapped
    model streams, loads and guides like the model itself. Subclasses define ``forward``."""

    def __init__(self, inner: Any):
        super().__init__()
        self.inner = inner

    @property
    def geometry(self) -> Geometry | None:
        return geometry_of(self.inner)

    @property
    def config(self) -> Any:
        return getattr(self.inner, "config", None)

    @property
    def negative(self) -> Any:
        return getattr(self.inner, "negative", None)

    @property
    def device(self) -> torch.device | None:
        device = getattr(self.inner, "device", None)
        return device if isinstance(device, torch.device) else None


class CallCounter(ModelWrapper):
    """Counts what reaches the wrapped model.

    Attributes:
        calls: calls made.
        samples: latent samples evaluated (a guided call over ``b`` streams evaluates ``2b``).
    """

    def __init__(self, inner: Any):
        super().__init__(inner)
        self.calls = 0
        self.samples = 0

    def forward(self, x: Tensor, sigma: Tensor, text: Any) -> Tensor:
        self.calls += 1
        self.samples += x.shape[0]
        return self.inner(x, sigma, text)


def placement(model: Any, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> tuple[torch.device, torch.dtype]:
    """Where a stream over ``model`` lives: ``(device, buffer dtype)``.

    The device is ``device`` when given, else the ``device`` a model names (a host's adapter,
    which holds no parameters of its own), else its first parameter's, else the CPU. The buffer
    dtype is ``dtype`` when given, else the model's floating dtype, but never below float32:
    Euler steps accumulate, and a bf16 buffer would lose the small steps.
    """
    named = getattr(model, "device", None)
    found_device, found_dtype = (named if isinstance(named, torch.device) else None), None
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            found_device = found_device or p.device
            found_dtype = p.dtype if p.dtype.is_floating_point else None
            break
    device = torch.device(device) if device is not None else (found_device or torch.device("cpu"))
    if dtype is None:
        dtype = found_dtype if found_dtype in (torch.float32, torch.float64) else torch.float32
    return device, dtype
