"""Keeping x0_hat inside the data's range, as Denoiser wrappers (so every sampler uses them).

Pixel data live in [-1, 1], but a sampler's x0_hat strays outside early in sampling and with
strong guidance, and the excess is carried into every later step. Two remedies, both off
unless asked for:

- ``clip_x0``: x0_hat clamped to [low, high] (DDPM's sampling code; diffusers'
  ``clip_sample``);
- ``dynamic_threshold``: per sample, s = the ``percentile`` quantile of |x0_hat|, at least
  ``bound``; x0_hat <- clamp(x0_hat, -s, s) bound / s (Saharia et al. 2022, Imagen, section
  2.3 with bound = 1; diffusers' ``thresholding``): saturated pixels are pushed inwards
  instead of piling up at the edge.

Every target is affine in x0_hat with the same coefficient on x_t, so replacing x0_hat is
replacing the model's eps, score or v consistently.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rediff._tensor import Tensor, expand_to
from rediff.model import Denoiser
from rediff.transitions import Point


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


class _Wrapped(Denoiser):
    """A Denoiser whose x0_hat passes through ``limit``; learned variances pass through."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser, self.schedule = denoiser, denoiser.schedule

    def limit(self, x0: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        return self.limit(self.denoiser(x_t, t, **cond))

    def at(self, x_t: Tensor, point: Point, **cond: Any) -> Tensor:
        return self.limit(self.denoiser.at(x_t, point, **cond))

    def with_variance(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        x0, fraction = self.denoiser.with_variance(x_t, t, **cond)
        return self.limit(x0), fraction


class ClippedX0(_Wrapped):
    """x0_hat clamped to [low, high] (see the module docstring)."""

    def __init__(self, denoiser: Denoiser, low: float = -1.0, high: float = 1.0) -> None:
        super().__init__(denoiser)
        self.low, self.high = _finite("low", low), _finite("high", high)
        if not self.low < self.high:
            raise ValueError(f"clipping needs low < high, got [{self.low}, {self.high}]")

    def limit(self, x0: Tensor) -> Tensor:
        return x0.clamp(self.low, self.high)


class DynamicThreshold(_Wrapped):
    """Imagen's dynamic thresholding of x0_hat (see the module docstring)."""

    def __init__(self, denoiser: Denoiser, percentile: float = 0.995, bound: float = 1.0):
        super().__init__(denoiser)
        self.percentile, self.bound = _finite("percentile", percentile), _finite("bound", bound)
        if not 0.0 < self.percentile <= 1.0:
            raise ValueError(f"the percentile must lie in (0, 1], got {self.percentile}")
        if not self.bound > 0:
            raise ValueError(f"the bound must be > 0, got {self.bound}")

    def limit(self, x0: Tensor) -> Tensor:
        flat = x0.abs().reshape(x0.shape[0], -1).to(torch.promote_types(x0.dtype, torch.float32))
        s = torch.quantile(flat, self.percentile, dim=1).clamp_min(self.bound)
        s = expand_to(s, x0)
        return torch.maximum(torch.minimum(x0, s), -s) * (self.bound / s)


def clip_x0(denoiser: Denoiser, low: float = -1.0, high: float = 1.0) -> ClippedX0:
    """``denoiser`` with x0_hat clamped to [low, high]."""
    return ClippedX0(denoiser, low, high)


def dynamic_threshold(
    denoiser: Denoiser, percentile: float = 0.995, bound: float = 1.0
) -> DynamicThreshold:
    """``denoiser`` with Imagen's dynamic thresholding of x0_hat at ``percentile``, for data
    in [-bound, bound]."""
    return DynamicThreshold(denoiser, percentile, bound)
