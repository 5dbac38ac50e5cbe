"""Analytic velocity fields: exact flow-matching velocities for data with a known law.

They fit the velocity protocol, so samplers, streams and distillation can be checked against a
ground truth with no trained weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["GaussianVelocity"]


@dataclass(frozen=True)
class GaussianVelocity:
    """The exact velocity ``E[eps - x0 | x_sigma]`` for data ``x0 ~ N(mean, std^2)`` per element.

    With ``a = 1 - sigma`` the noisy sample is Gaussian with variance ``a^2 std^2 + sigma^2``, and

        v(x, sigma) = (sigma - a std^2) / (a^2 std^2 + sigma^2) * (x - a mean) - mean,

    so integrating it from sigma = 1 to 0 carries N(0, 1) exactly onto N(mean, std^2).
    The field is elementwise: frames never influence one another. ``text`` is ignored.
    """

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not self.std > 0:
            raise ValueError(f"std must be > 0, got {self.std}")

    def __call__(self, x: Tensor, sigma: Tensor, text=None) -> Tensor:
        """x ``[B, C, F, H, W]``, sigma ``[B, F]`` -> v like x."""
        s = sigma.to(x.dtype)[:, None, :, None, None]  # [B, 1, F, 1, 1]
        a = 1 - s
        var = a * a * self.std ** 2 + s * s
        return (s - a * self.std ** 2) / var * (x - a * self.mean) - self.mean

    def euler_law(self, sigmas) -> tuple[float, float]:
        """Mean and std that Euler over the decreasing ``sigmas`` (1 -> 0) gives from N(0, 1).

        The field is affine in x, so ``x = alpha * eps + beta`` stays exact through every step:
        this is the law a correct sampler on that grid must produce, discretisation error and all.
        """
        alpha, beta = 1.0, 0.0
        for s, t in zip(sigmas[:-1], sigmas[1:]):
            s, t = float(s), float(t)
            a = 1 - s
            gain = (s - a * self.std ** 2) / (a * a * self.std ** 2 + s * s)
            alpha, beta = alpha - (s - t) * gain * alpha, beta - (s - t) * (gain * (beta - a * self.mean) - self.mean)
        return beta, abs(alpha)
