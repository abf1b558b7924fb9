"""DDIM and DDPM ancestral sampling, with Analytic-DPM's optimal reverse variance.

Both step from p (noisier) to q with the DDIM family (Song et al. 2021, DDIM, eq. 12), written
for any (alpha, sigma) with lam = log(alpha / sigma) and h = lam_q - lam_p > 0:

    x_q = alpha_q x0_hat + sqrt(sigma_q^2 - v) eps_hat + sqrt(w) z,

where c^2 = sigma_q^2 (1 - e^{-2h}) is the posterior variance of q(x_q | x_p, x0)
(DDPM's beta_tilde; for VP it equals (1 - abar_q)/(1 - abar_p) (1 - abar_p/abar_q)).
DDIM: v = w = eta^2 c^2. DDPM: v = c^2 (the posterior mean, Ho et al. 2020, eq. 7) and w is
beta = sigma_p^2 (1 - e^{-2h}), beta_tilde = c^2, the model's learned interpolation
exp(f log beta + (1 - f) log beta_tilde) (Nichol & Dhariwal 2021, eq. 15; per element, for
any pair of grid times), or Analytic-DPM's optimal variance (Bao et al. 2022, theorem 1, in
(alpha, sigma) form)

    w* = v + (sigma_q e^h - sqrt(sigma_q^2 - v))^2 (1 - Gamma_p),
    Gamma_p = E ||eps_hat(x_p)||^2 / d.

A step into t = 0 returns x0_hat (no noise).
"""

from __future__ import annotations

import itertools
import math

from rediff._choices import Choice
from rediff._tensor import Tensor, scaled_sum
from rediff.model import Denoiser
from rediff.noise import Randomness
from rediff.parametrization import Target, coefficients
from rediff.samplers._common import (
    Callback,
    check_positive,
    noise_like,
    notify,
    working,
)
from rediff.samplers.analytic import GammaTable
from rediff.transitions import (
    Point,
    learned_variance,
    points,
    posterior_variance,
    transition_variance,
)


class Variance(Choice):
    """DDPM's reverse variance: beta (upper bound), beta_tilde (lower bound), the model's
    learned interpolation between them, or Analytic-DPM."""

    BETA = "beta"
    BETA_TILDE = "beta_tilde"
    LEARNED = "learned"
    ANALYTIC = "analytic"


def optimal_variance(p: Point, q: Point, v: float, gamma: float) -> float:
    """Analytic-DPM's w* for mean variance v and Gamma_p (clipped into [0, 1], which keeps w*
    within Bao et al.'s bounds)."""
    gap = q.sigma * math.exp(q.lam - p.lam) - math.sqrt(q.sigma**2 - v)
    return v + gap**2 * (1.0 - min(max(gamma, 0.0), 1.0))


def family_step(
    x: Tensor, x0: Tensor, p: Point, q: Point, v: float, w: float | Tensor, generator, i: int
) -> Tensor:
    """x_q = alpha_q x0 + sqrt(sigma_q^2 - v) eps_hat + sqrt(w) z (no noise into t = 0); w is
    a number or a tensor of per-element variances."""
    if q.is_data:
        return x0
    a, b = coefficients(Target.EPS, p.alpha, p.sigma)  # eps_hat = a x + b x0
    k = math.sqrt(max(q.sigma**2 - v, 0.0))
    mean = scaled_sum(k * a, x, q.alpha + k * b, x0)
    if isinstance(w, Tensor):
        return mean + w.sqrt().to(mean.dtype) * noise_like(x, generator, i, p, q)
    if w > 0:
        return mean.add_(noise_like(x, generator, i, p, q), alpha=math.sqrt(w))
    return mean


def _gamma_at(gamma: GammaTable | None, p: Point) -> float:
    if gamma is None:
        raise ValueError(
            "the analytic variance needs Gamma_t: pass gamma=samplers.estimate_gamma(denoiser, "
            "x0, ts) (or a saved GammaTable)"
        )
    return gamma(p.t)


def ddim(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Randomness = None,
    callback: Callback | None = None,
    eta: float = 0.0,
    gamma: GammaTable | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12): eta = 0 is deterministic, eta = 1 has DDPM's posterior
    variance. With ``gamma`` (and eta > 0) the noise uses Analytic-DPM's optimal variance."""
    eta = check_positive("eta", eta, allow_zero=True)
    grid, x_in = points(denoiser.schedule, ts, from_pure_noise=True), x
    x = working(x)
    for i, (p, q) in enumerate(itertools.pairwise(grid)):
        x0 = denoiser.at(x, p)
        v = eta**2 * posterior_variance(p, q)
        w = v if gamma is None or eta == 0 else optimal_variance(p, q, v, _gamma_at(gamma, p))
        x = family_step(x, x0, p, q, v, w, generator, i)
        notify(callback, i, p, q, x, x0)
    return x.to(x_in.dtype)


def ddpm(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Randomness = None,
    callback: Callback | None = None,
    variance: Variance | str = Variance.BETA,
    gamma: GammaTable | None = None,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, algorithm 2) on any grid: the posterior mean
    plus noise of variance ``beta``, ``beta_tilde``, ``learned`` (a model built with
    learned_variance) or ``analytic`` (needs ``gamma``)."""
    variance = Variance.parse(variance)
    grid, x_in = points(denoiser.schedule, ts, from_pure_noise=True), x
    x = working(x)
    for i, (p, q) in enumerate(itertools.pairwise(grid)):
        v = posterior_variance(p, q)
        if variance is Variance.LEARNED:
            x0, fraction = denoiser.with_variance(x, p.t)
            w = learned_variance(p, q, fraction)
        else:
            x0 = denoiser.at(x, p)
            if variance is Variance.BETA:
                w = transition_variance(p, q)
            elif variance is Variance.BETA_TILDE:
                w = v
            else:
                w = optimal_variance(p, q, v, _gamma_at(gamma, p))
        x = family_step(x, x0, p, q, v, w, generator, i)
        notify(callback, i, p, q, x, x0)
    return x.to(x_in.dtype)
