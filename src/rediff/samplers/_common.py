"""What every sampler shares: the grid's coordinates, the working dtype, noise, callbacks.

Per-step coefficients are Python floats computed in float64 from log-space quantities (the
grid lives on the CPU); x is updated in the caller's dtype, promoted to at least float32
inside the loop (DESIGN.md, style rule 8).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rediff import grids
from rediff._tensor import Tensor, check_finite, randn
from rediff.model import Denoiser
from rediff.parametrization import Target, convert


@dataclass(frozen=True)
class Point:
    """A grid time with its coefficients (float64): alpha, sigma and lam = log(alpha / sigma)
    (half the log-SNR, DPM-Solver's lambda). At t = 0: alpha = 1, sigma = 0, lam = +inf."""

    t: float
    alpha: float
    sigma: float
    lam: float

    @property
    def noise_level(self) -> float:
        return self.sigma / self.alpha

    @property
    def is_data(self) -> bool:
        return self.sigma == 0.0


@dataclass(frozen=True)
class Step:
    """What a callback receives after each step: the step's index, its two endpoints, the new
    x and the last x0_hat the step computed."""

    index: int
    t: float
    t_next: float
    x: Tensor
    x0_hat: Tensor


Callback = Callable[[Step], None]


def points(denoiser: Denoiser, ts: Tensor) -> list[Point]:
    """Validate ``ts`` against the denoiser's schedule and return its coordinates."""
    schedule = denoiser.schedule
    ts = grids.check(schedule, ts)
    alpha, sigma = schedule.alpha(ts).tolist(), schedule.sigma(ts).tolist()
    lam = (0.5 * schedule.log_snr(ts)).tolist()
    return [Point(*p) for p in zip(ts.tolist(), alpha, sigma, lam, strict=True)]


def point_at(denoiser: Denoiser, t: float) -> Point:
    """The coordinates of one time (for intermediate times of single-step solvers)."""
    s = denoiser.schedule
    return Point(t, float(s.alpha(t)), float(s.sigma(t)), float(0.5 * s.log_snr(t)))


def point_at_lam(denoiser: Denoiser, lam: float) -> Point:
    """The point with half-log-SNR ``lam`` (an intermediate time in log-SNR)."""
    return point_at(denoiser, float(denoiser.schedule.t_from_log_snr(2.0 * lam)))


def working(x: Tensor) -> Tensor:
    """The starting point x, checked to be finite (every sampler starts here), promoted to at
    least float32 for the loop (bfloat16 and float16 inputs)."""
    check_finite("x (the sampler's starting point)", x)
    return x.to(torch.promote_types(x.dtype, torch.float32))


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """N(0, I) noise shaped like x, drawn from ``generator`` (never the global RNG state when
    a generator is given)."""
    return randn(x.shape, generator, x.dtype, x.device)


def eps_from_x0(x: Tensor, x0_hat: Tensor, p: Point) -> Tensor:
    """eps_hat = (x - alpha x0_hat) / sigma, through the one conversion module."""
    return convert(x0_hat, x, p.alpha, p.sigma, Target.X0, Target.EPS)


def evaluate(denoiser: Denoiser, x: Tensor, p: Point, target: Target) -> tuple[Tensor, Tensor]:
    """One denoiser evaluation at point p, as ``target`` (converted by the one conversion
    module) and as x0_hat."""
    x0 = denoiser(x, p.t)
    return convert(x0, x, p.alpha, p.sigma, Target.X0, target), x0


def push(history: list, item, keep: int) -> list:
    """The last ``keep`` entries of history + [item] (multistep solvers' memory)."""
    return [*history[len(history) - keep + 1 :], item] if keep > 1 else [item]


def check_order(order: int, allowed: tuple[int, ...]) -> None:
    if order not in allowed:
        raise ValueError(f"order must be one of {allowed}, got {order!r}")


def notify(callback: Callback | None, i: int, p: Point, q: Point, x: Tensor, x0: Tensor) -> None:
    if callback is not None:
        callback(Step(i, p.t, q.t, x, x0))


def expm1_neg(h: float) -> float:
    """1 - exp(-h) for h in (0, inf], exact at h = inf (the jump to sigma = 0)."""
    return -math.expm1(-h)


def transition_variance(p: Point, q: Point) -> float:
    """Variance of the forward transition q(x_p | x_q) from the less noisy q to p:
    sigma_p^2 - (alpha_p/alpha_q)^2 sigma_q^2 = sigma_p^2 (1 - e^{-2h}) (DDPM's beta for one
    step; the reverse-diffusion predictor's G^2)."""
    return p.sigma**2 * expm1_neg(2.0 * (q.lam - p.lam))


def check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    """A finite, positive (or, with ``allow_zero``, non-negative) option, else a ValueError."""
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return float(value)
