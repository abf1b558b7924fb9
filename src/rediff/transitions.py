"""The Gaussian transitions between two times of a forward process, written once.

For times q < p (q less noisy) with alpha, sigma and lam = log(alpha / sigma) (half the
log-SNR, DPM-Solver's lambda), h = lam_q - lam_p > 0:

    forward transition  q(x_p | x_q)     = N((alpha_p / alpha_q) x_q, sigma_p^2 (1 - e^{-2h}))
    forward posterior   q(x_q | x_p, x0) = N((sigma_q / sigma_p) e^{-h} x_p
                                             + alpha_q (1 - e^{-2h}) x0, sigma_q^2 (1 - e^{-2h}))

(Ho et al. 2020, eqs. 6-7, in (alpha, sigma) form for any schedule: between consecutive DDPM
steps the transition variance is beta_k and the posterior variance beta_tilde_k). The
samplers (DDPM, DDIM, reverse diffusion, RePaint's jump back) and DDPM's variational bound
take these from here; learned variances interpolate between the two (Nichol & Dhariwal 2021,
eq. 15). Every function takes Python floats (samplers' per-step coefficients) or float64
tensors (the bound's tables over all steps) alike.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from rediff import grids
from rediff._tensor import Tensor
from rediff.schedules import DiscreteVP, Schedule

Number = float | Tensor


@dataclass(frozen=True)
class Point:
    """A time with its coefficients (float64): alpha, sigma and lam = log(alpha / sigma). At
    t = 0: alpha = 1, sigma = 0, lam = +inf. The fields are floats, or tensors [n] for
    ``n`` times at once."""

    t: Number
    alpha: Number
    sigma: Number
    lam: Number

    @property
    def noise_level(self) -> Number:
        return self.sigma / self.alpha

    @property
    def is_data(self) -> bool:
        return self.sigma == 0.0


def points(schedule: Schedule, ts: Tensor, *, from_pure_noise: bool = False) -> list[Point]:
    """Validate the grid ``ts`` against ``schedule`` (``grids.check``) and return the
    coordinates of its times, as Python floats. A grid starting where alpha = 0 (pure noise:
    flow matching's t = 1) is refused unless the sampler can step from there
    (``from_pure_noise``: DDIM, DDPM, Euler).

    The coordinates are computed once per (schedule, grid), vectorised, and cached (the last
    64 grids): every later batch sampled on the same grid reuses them."""
    times = torch.as_tensor(ts).detach().to("cpu", torch.float64)
    if times.ndim != 1:
        grids.check(schedule, times)  # raises, naming the shape
    grid = _grid(schedule, tuple(times.tolist()))
    if not from_pure_noise and grid[0].alpha == 0.0:
        raise ValueError(
            f"the grid starts at t = {grid[0].t}, pure noise (alpha = 0, infinite noise "
            "level), which this sampler cannot step from; use ddim, ddpm or euler there, or a "
            "grid with t_max < 1 (grids.make(..., t_max=0.999))"
        )
    return list(grid)


def clear_cache() -> None:
    """Forget every cached grid (benchmarks measure the first batch's cost with it)."""
    _grid.cache_clear()


@functools.lru_cache(maxsize=64)
def _grid(schedule: Schedule, ts: tuple[float, ...]) -> tuple[Point, ...]:
    """The validated grid's points (schedules are immutable and hashable, Points frozen)."""
    ts = grids.check(schedule, torch.as_tensor(ts, dtype=torch.float64))
    log_alpha, log_sigma = schedule.log_coefficients(ts)
    alpha, sigma = log_alpha.exp().tolist(), log_sigma.exp().tolist()
    lam = (log_alpha - log_sigma).tolist()
    return tuple(Point(*p) for p in zip(ts.tolist(), alpha, sigma, lam, strict=True))


def point_at(schedule: Schedule, t: float) -> Point:
    """The coordinates of one time (for intermediate times of single-step solvers)."""
    return Point(
        t, float(schedule.alpha(t)), float(schedule.sigma(t)), float(0.5 * schedule.log_snr(t))
    )


def point_at_lam(schedule: Schedule, lam: float) -> Point:
    """The point with half-log-SNR ``lam`` (an intermediate time in log-SNR)."""
    return point_at(schedule, float(schedule.t_from_log_snr(2.0 * lam)))


def expm1_neg(h: Number) -> Number:
    """1 - exp(-h) for h in (0, inf], exact at h = inf (the jump to sigma = 0)."""
    return -torch.expm1(-h) if isinstance(h, Tensor) else -math.expm1(-h)


def transition_variance(p: Point, q: Point) -> Number:
    """Var q(x_p | x_q) from the less noisy q to p: sigma_p^2 - (alpha_p/alpha_q)^2 sigma_q^2
    = sigma_p^2 (1 - e^{-2h}) (DDPM's beta for one step; the reverse-diffusion predictor's
    G^2)."""
    return p.sigma**2 * expm1_neg(2.0 * (q.lam - p.lam))


def posterior_variance(p: Point, q: Point) -> Number:
    """c^2 = Var q(x_q | x_p, x0) = sigma_q^2 (1 - e^{-2h}) (DDPM's beta_tilde for one step;
    0 into data)."""
    return q.sigma**2 * expm1_neg(2.0 * (q.lam - p.lam))


def posterior_data_coefficient(p: Point, q: Point) -> Number:
    """The x0 coefficient of the mean of q(x_q | x_p, x0): alpha_q (1 - e^{-2h}) (DDPM's
    sqrt(abar_{k-1}) beta_k / (1 - abar_k))."""
    return q.alpha * expm1_neg(2.0 * (q.lam - p.lam))


def interpolated_variance(fraction: Tensor, beta: Number, beta_tilde: Number) -> Tensor:
    """exp(f log beta + (1 - f) log beta_tilde): a learned variance between DDPM's two fixed
    ones, per element of the model's fraction f (Nichol & Dhariwal 2021, eq. 15)."""
    log_beta = torch.log(torch.as_tensor(beta, dtype=fraction.dtype, device=fraction.device))
    log_tilde = torch.log(torch.as_tensor(beta_tilde, dtype=fraction.dtype, device=fraction.device))
    return torch.exp(fraction * log_beta + (1.0 - fraction) * log_tilde)


def learned_variance(p: Point, q: Point, fraction: Tensor) -> Tensor:
    """The learned variance of the step p -> q (beta and beta_tilde of that step); 0 into
    data."""
    if q.is_data:
        return torch.zeros_like(fraction)
    return interpolated_variance(fraction, transition_variance(p, q), posterior_variance(p, q))


@dataclass(frozen=True)
class StepTable:
    """DDPM's per-step coefficients for k = 1..T, float64 [T] indexed by k - 1: ``beta``
    (transition variance), ``beta_tilde`` (posterior variance, 0 at k = 1) and ``c0`` (the
    posterior mean's x0 coefficient), all from the functions above."""

    beta: Tensor
    beta_tilde: Tensor
    c0: Tensor


@functools.cache
def step_table(schedule: DiscreteVP) -> StepTable:
    """The ``StepTable`` of a DiscreteVP (cached per schedule: schedules are immutable)."""
    ts = torch.arange(schedule.num_steps + 1, dtype=torch.float64) / schedule.num_steps
    t = ts[1:]
    alpha = torch.cat([torch.ones(1, dtype=torch.float64), schedule.alpha(t)])
    sigma = torch.cat([torch.zeros(1, dtype=torch.float64), schedule.sigma(t)])
    lam = torch.cat([torch.full((1,), math.inf, dtype=torch.float64), 0.5 * schedule.log_snr(t)])
    p = Point(ts[1:], alpha[1:], sigma[1:], lam[1:])  # step k
    q = Point(ts[:-1], alpha[:-1], sigma[:-1], lam[:-1])  # step k - 1
    return StepTable(
        transition_variance(p, q), posterior_variance(p, q), posterior_data_coefficient(p, q)
    )
