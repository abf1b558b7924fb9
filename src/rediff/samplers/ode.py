"""Probability-flow ODE samplers: Euler, EDM's Heun (with churn), adaptive (torchdiffeq).

All work in EDM's coordinates (Karras et al. 2022, eq. 4 and table 1): the scaled state
y = x / alpha and the noise level s = sigma / alpha, where the probability-flow ODE reads

    dy/ds = (y - x0_hat(alpha y, s)) / s.

A step into t = 0 (s = 0) returns x0_hat, which is also the Euler step's limit there.
"""

from __future__ import annotations

import itertools
import math

import torch

from rediff._tensor import Tensor, lazy
from rediff.model import Denoiser
from rediff.noise import Randomness
from rediff.samplers._common import (
    Callback,
    check_positive,
    data_step,
    noise_like,
    notify,
    working,
)
from rediff.transitions import Point, point_at, points


def euler(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Randomness = None,
    callback: Callback | None = None,
) -> Tensor:
    """Euler's method on the probability-flow ODE in noise level (Karras et al. 2022, alg. 1
    without the Heun correction): y_q = y_p + (s_q - s_p) (y_p - x0_hat) / s_p. Multiplied
    by alpha_q this is x_q = alpha_q x0_hat + sigma_q eps_hat, DDIM with eta = 0 (``data_step``),
    the form used here because it also steps from pure noise (alpha_p = 0). On flow matching
    it is Euler in t on the velocity, x_q = x_p + (t_q - t_p) v_hat (diffusers'
    FlowMatchEulerDiscreteScheduler)."""
    del generator  # deterministic
    grid, x_in = points(denoiser.schedule, ts, from_pure_noise=True), x
    x = working(x)
    for i, (p, q) in enumerate(itertools.pairwise(grid)):
        x0 = denoiser.at(x, p)
        x = data_step(*lazy(x, x0), p, q).value()
        notify(callback, i, p, q, x, x0)
    return x.to(x_in.dtype)


def _churn(
    denoiser: Denoiser, x: Tensor, p: Point, gamma: float, s_noise: float, generator, i: int
) -> tuple[Tensor, Point]:
    """EDM's stochastic 'churn' (Karras et al. 2022, alg. 2, lines 4-6): raise the noise level
    from s to s_hat = s (1 + gamma) by adding fresh noise of variance s_hat^2 - s^2."""
    s_max = float(denoiser.schedule.noise_level(denoiser.schedule.t_max))
    s_hat = min(p.noise_level * (1.0 + gamma), s_max)
    if s_hat <= p.noise_level:
        return x, p
    hat = point_at(denoiser.schedule, float(denoiser.schedule.t_from_noise_level(s_hat)))
    extra = math.sqrt(hat.noise_level**2 - p.noise_level**2) * s_noise
    y = x / p.alpha + extra * noise_like(x, generator, i, p, hat)
    return hat.alpha * y, hat


def heun(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Randomness = None,
    callback: Callback | None = None,
    churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """EDM's second-order Heun sampler (Karras et al. 2022, algorithm 2).

    churn (S_churn) > 0 adds noise before each step whose noise level lies in
    [s_tmin, s_tmax], with gamma = min(churn / steps, sqrt(2) - 1); churn = 0 is the
    deterministic algorithm 1. The step into t = 0 is a single Euler (x0_hat) step.
    """
    churn = check_positive("churn", churn, allow_zero=True)
    s_noise = check_positive("s_noise", s_noise, allow_zero=True)
    grid, x_in = points(denoiser.schedule, ts), x
    x = working(x)
    n = len(grid) - 1
    for i, (p, q) in enumerate(itertools.pairwise(grid)):
        gamma = min(churn / n, math.sqrt(2.0) - 1.0) if s_tmin <= p.noise_level <= s_tmax else 0.0
        if gamma > 0:
            x, p = _churn(denoiser, x, p, gamma, s_noise, generator, i)
        x0 = denoiser.at(x, p)
        y = x / p.alpha
        slope = (y - x0) / p.noise_level
        y_next = y + (q.noise_level - p.noise_level) * slope
        if not q.is_data:  # second-order correction (trapezoidal rule)
            x0_next = denoiser.at(q.alpha * y_next, q)
            slope_next = (y_next - x0_next) / q.noise_level
            y_next = y + (q.noise_level - p.noise_level) * 0.5 * (slope + slope_next)
        x = q.alpha * y_next
        notify(callback, i, p, q, x, x0)
    return x.to(x_in.dtype)


def flow_velocity(
    denoiser: Denoiser,
    u: Tensor | float,
    y: Tensor,
    u_range: tuple[float, float],
    dtype: torch.dtype | None = None,
    **cond,
) -> Tensor:
    """The probability-flow ODE in y = x / alpha against u = log(noise level s):
    dy/du = y - x0_hat(alpha y, t(u)) (Karras et al. 2022, eq. 4 with s = sigma / alpha).

    u is clamped into ``u_range`` (solvers probe past the ends, and u may round past them in
    float32); the denoiser sees ``dtype`` (default y's), the result has y's dtype.
    """
    s = math.exp(min(max(float(u), u_range[0]), u_range[1]))
    t = float(denoiser.schedule.t_from_noise_level(s))
    alpha = float(denoiser.schedule.alpha(t))
    x0_hat = denoiser((alpha * y).to(dtype or y.dtype), t, **cond)
    return y - x0_hat.to(y.dtype)


def ode(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Randomness = None,
    callback: Callback | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
) -> Tensor:
    """Adaptive probability-flow ODE solve (Song et al. 2021, section 4.3) with torchdiffeq.

    Integrates dy/du = y - x0_hat(alpha y, t(u)) in u = log(noise level), which is smooth
    where dy/dt is stiff, from ts[0] to the last positive time of ``ts``; if ``ts`` ends with
    0 the result is then denoised (one more evaluation). Only the first and last times of
    ``ts`` matter. The number of evaluations is whatever the solver needs for rtol/atol;
    ``rediff.sample`` counts it.
    """
    from torchdiffeq import odeint  # optional heavy import, done lazily

    del generator  # deterministic
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    grid, x_in = points(denoiser.schedule, ts), x
    x = working(x)
    start, end = grid[0], grid[-2] if grid[-1].is_data else grid[-1]

    u_range = (math.log(end.noise_level), math.log(start.noise_level))

    def velocity(u: Tensor, y: Tensor) -> Tensor:
        return flow_velocity(denoiser, u, y, u_range)

    if end.t < start.t:  # a one-point grid [t, 0] needs no integration, only the final jump
        span = torch.tensor(
            [math.log(start.noise_level), math.log(end.noise_level)], dtype=x.dtype, device=x.device
        )
        y = odeint(velocity, x / start.alpha, span, rtol=rtol, atol=atol, method=method)[-1]
        x = end.alpha * y
    x0 = x
    if grid[-1].is_data:
        x0 = denoiser.at(x, end)
        x = x0
    notify(callback, 0, start, grid[-1], x, x0)
    return x.to(x_in.dtype)
