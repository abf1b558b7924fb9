"""DDPM's discrete variational bound (Ho et al. 2020, eq. 5; Sohl-Dickstein et al. 2015).

For a DiscreteVP with steps k = 1..T and data x0 on a grid of ``levels`` values in [-1, 1],

    -log p(x0) <= L_T + sum_{k=2}^{T} L_{k-1} + L_0,
    L_T     = KL(q(x_T | x0) || N(0, I)),
    L_{k-1} = E_q KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k)),
    L_0     = -E_q log p(x0 | x_1)     (the discretised Gaussian decoder, eq. 13).

The reverse step p(x_{k-1} | x_k) = N(mu_tilde(x_k, x0_hat(x_k)), s_k^2) uses the posterior
mean with the denoiser's x0_hat and a variance s_k^2: DDPM's fixed beta_k or the posterior
variance beta_tilde_k (at k = 1, where beta_tilde_1 = 0, beta_tilde_2 is used, as in
Nichol & Dhariwal 2021's clipped log-variance), or, for a model that learns it, the
per-element interpolation exp(f log beta_k + (1 - f) log beta_tilde_k) (their eq. 15).
With (alpha, sigma) of the two steps,

    mu_tilde = (alpha_k / alpha_{k-1}) (sigma_{k-1}^2 / sigma_k^2) x_k + c0_k x0,
    c0_k = alpha_{k-1} beta_k / sigma_k^2,   beta_tilde_k = sigma_{k-1}^2 beta_k / sigma_k^2,

so the model's and the true mean differ by c0_k (x0 - x0_hat), and each KL between isotropic
Gaussians is, per element, 0.5 (log(s^2 / v) + v / s^2 - 1 + (c0 (x0 - x0_hat))^2 / s^2).
Terms are in nats per sample; ``bits_per_dim`` divides by d ln 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rediff._choices import Choice
from rediff._tensor import Tensor, check_finite, expand_to, randn, sum_except_batch
from rediff.model import Denoiser
from rediff.schedules import DiscreteVP
from rediff.transitions import interpolated_variance, step_table

_LN2 = math.log(2.0)


class ReverseVariance(Choice):
    """The variance of p(x_{k-1} | x_k): beta_k (upper bound), beta_tilde_k, or the model's
    learned interpolation between their logarithms."""

    BETA = "beta"
    BETA_TILDE = "beta_tilde"
    LEARNED = "learned"


def discrete_schedule(denoiser: Denoiser) -> DiscreteVP:
    """The denoiser's schedule, which the discrete bound needs to be a DiscreteVP."""
    schedule = denoiser.schedule
    if not isinstance(schedule, DiscreteVP):
        raise ValueError(
            f"the discrete variational bound needs a DiscreteVP schedule (integer steps), got "
            f"{type(schedule).__name__}; use the probability-flow ODE likelihood instead"
        )
    return schedule


def reverse_variance(schedule: DiscreteVP, variance: ReverseVariance) -> Tensor:
    """s_k^2 of a fixed variance, float64 [T] indexed by k - 1: beta_k, or beta_tilde_k with
    beta_tilde_1 = 0 replaced by beta_tilde_2 (improved DDPM's clipped log-variance)."""
    table = step_table(schedule)
    if variance is ReverseVariance.BETA:
        return table.beta
    if variance is ReverseVariance.LEARNED:
        raise ValueError("a learned variance depends on x_k: see _reverse")
    clipped = table.beta_tilde.clone()
    clipped[0] = table.beta_tilde[1] if len(clipped) > 1 else table.beta[0]
    return clipped


def _normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def decoder_log_prob(x0: Tensor, mean: Tensor, std: Tensor | float, levels: int = 256) -> Tensor:
    """log p(x0 | x_1) of DDPM's discretised Gaussian decoder (Ho et al. 2020, eq. 13), summed
    over dimensions: [B, *D] -> [B], float64 (``std`` a number, [B] or per element).

    x0 lies on ``levels`` equally spaced values in [-1, 1] (256 for 8-bit images, 17 for the
    digits); each value owns the interval of half-width 1 / (levels - 1) around it, and the
    two end values own the tails to -inf and +inf, so the probabilities sum to one.
    """
    if levels < 2:
        raise ValueError(f"levels must be at least 2, got {levels}")
    half = 1.0 / (levels - 1)
    x = x0.to(torch.float64)
    std = torch.as_tensor(std, dtype=torch.float64, device=x.device)
    std = std if std.ndim == x.ndim else expand_to(std, x)
    upper = torch.where(x > 1.0 - half / 2, torch.inf, (x + half - mean) / std)
    lower = torch.where(x < -1.0 + half / 2, -torch.inf, (x - half - mean) / std)
    # difference of CDFs taken on the side of the mean where it is not a difference of ones
    flip = lower > 0
    hi, lo = torch.where(flip, -lower, upper), torch.where(flip, -upper, lower)
    prob = _normal_cdf(hi) - _normal_cdf(lo)
    return sum_except_batch(torch.log(prob.clamp_min(1e-300)))


def check_data(x0: Tensor) -> None:
    """Refuse data the discretised decoder cannot model: NaN/Inf or values outside [-1, 1]."""
    check_finite("x0", x0)
    if bool((x0.abs() > 1.0 + 1e-6).any()):
        raise ValueError(
            "the discrete bound models data in [-1, 1] (pixels mapped by x = 2 p / max - 1); "
            f"got values in [{float(x0.min()):.3g}, {float(x0.max()):.3g}]"
        )


def _step_times(schedule: DiscreteVP, k: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
    """k as a long tensor in 1..T (index k - 1 on the CPU) and its time k / T on x0's device."""
    k = torch.as_tensor(k).long().cpu()
    if k.ndim != 1 or k.shape[0] != x0.shape[0]:
        raise ValueError(f"k must have shape [B] = [{x0.shape[0]}], got {tuple(k.shape)}")
    if bool((k < 1).any()) or bool((k > schedule.num_steps).any()):
        raise ValueError(f"steps k must lie in 1..{schedule.num_steps}")
    return k - 1, (k.double() / schedule.num_steps).to(x0.device)


def _reverse(
    denoiser: Denoiser, x0, i: Tensor, t, noise, variance: ReverseVariance, detach_mean, cond
) -> tuple[Tensor, Tensor]:
    """x0_hat(x_k) and s_k^2 (per step [B], or per element when learned), float64, for one
    draw x_k = alpha_k x0 + sigma_k noise; ``detach_mean`` stops gradients through x0_hat
    (the hybrid loss trains the variance only with the bound)."""
    schedule = discrete_schedule(denoiser)
    x_k = schedule.marginal(x0, t, noise)
    beta = step_table(schedule).beta
    x64 = x0.to(torch.float64)  # coefficients broadcast in float64: the KL's constant part
    # log(s^2 / v) + v / s^2 - 1 cancels to ~1e-10 at large k
    if variance is ReverseVariance.LEARNED:
        x0_hat, fraction = denoiser.with_variance(x_k, t, **cond)
        clipped = reverse_variance(schedule, ReverseVariance.BETA_TILDE)
        s2 = interpolated_variance(
            fraction.to(torch.float64),
            expand_to(beta[i].to(x0.device), x64),
            expand_to(clipped[i].to(x0.device), x64),
        )
    else:
        x0_hat = denoiser(x_k, t, **cond)
        s2 = expand_to(reverse_variance(schedule, variance)[i].to(x0.device), x64)
    x0_hat = x0_hat.detach() if detach_mean else x0_hat
    return x0_hat.to(torch.float64), s2


def kl_term(
    denoiser: Denoiser,
    x0: Tensor,
    k: Tensor,
    noise: Tensor,
    *,
    variance: ReverseVariance | str = ReverseVariance.BETA,
    detach_mean: bool = False,
    **cond,
) -> Tensor:
    """L_{k-1} = KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k)) per sample for k [B] in 2..T,
    nats, float64 [B], from one draw of x_k (its mean over draws is the term)."""
    schedule = discrete_schedule(denoiser)
    i, t = _step_times(schedule, k, x0)
    if bool((i < 1).any()):
        raise ValueError("kl_term takes k >= 2; k = 1 is the decoder term (decoder_nll)")
    variance = ReverseVariance.parse(variance)
    x0_hat, s2 = _reverse(denoiser, x0, i, t, noise, variance, detach_mean, cond)
    c, x64 = step_table(schedule), x0.to(torch.float64)
    v = expand_to(c.beta_tilde[i].to(x0.device), x64)
    c0 = expand_to(c.c0[i].to(x0.device), x64)
    err = (c0 * (x64 - x0_hat)).square()
    return 0.5 * sum_except_batch(torch.log(s2 / v) + v / s2 - 1.0 + err / s2)


def decoder_nll(
    denoiser: Denoiser,
    x0: Tensor,
    noise: Tensor,
    *,
    variance: ReverseVariance | str = ReverseVariance.BETA,
    levels: int = 256,
    detach_mean: bool = False,
    **cond,
) -> Tensor:
    """L_0 = -log p(x0 | x_1) per sample, nats, float64 [B], from one draw of x_1. The
    decoder's mean is mu_tilde at k = 1, which is x0_hat (alpha_0 = 1, sigma_0 = 0)."""
    schedule = discrete_schedule(denoiser)
    check_data(x0)
    i, t = _step_times(schedule, torch.ones(x0.shape[0]), x0)
    variance = ReverseVariance.parse(variance)
    x0_hat, s2 = _reverse(denoiser, x0, i, t, noise, variance, detach_mean, cond)
    return -decoder_log_prob(x0, x0_hat, s2.sqrt(), levels)


def step_terms(
    denoiser: Denoiser,
    x0: Tensor,
    k: Tensor,
    noise: Tensor,
    *,
    variance: ReverseVariance | str = ReverseVariance.BETA,
    levels: int = 256,
    detach_mean: bool = False,
    **cond,
) -> Tensor:
    """L_{k-1} (k >= 2) or L_0 (k = 1) per sample for mixed steps k [B] (training draws)."""
    schedule = discrete_schedule(denoiser)
    i, _ = _step_times(schedule, k, x0)
    k, first = i + 1, (i == 0).to(x0.device)
    options = {"variance": variance, "detach_mean": detach_mean}
    kl = kl_term(denoiser, x0, k.clamp_min(2), noise, **options, **cond)
    if not bool(first.any()):
        return kl
    nll = decoder_nll(denoiser, x0, noise, levels=levels, **options, **cond)
    return torch.where(first, nll, kl)


@dataclass(frozen=True)
class Bound:
    """The bound per sample, in nats (float64 [B]): ``prior`` L_T, ``decoder`` L_0,
    ``diffusion`` sum_{k>=2} L_{k-1} (exact sum or estimate), their ``total``;
    ``diffusion_se`` is the standard error of a subsampled ``diffusion`` (0 for the full
    sum); ``terms`` [T] the batch mean of each L_{k-1} (full sum only); ``dims`` = d."""

    prior: Tensor
    decoder: Tensor
    diffusion: Tensor
    diffusion_se: Tensor
    terms: Tensor | None
    dims: int

    @property
    def total(self) -> Tensor:
        return self.prior + self.decoder + self.diffusion

    @property
    def bits_per_dim(self) -> Tensor:
        return self.total / (self.dims * _LN2)


def diffusion_terms(
    term: Callable[[Tensor], Tensor],
    like: Tensor,
    T: int,
    num_steps: int | None,
    generator: torch.Generator | None,
    progress: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """sum_{k=2}^{T} L_{k-1} per sample from ``term(k)`` (the terms at steps k: [B] -> [B]),
    under no_grad: exactly (``num_steps`` None: every k, one call each), or from
    ``num_steps`` = m uniform draws of k per sample as (T - 1) times their mean, with its
    standard error (m >= 2). ``like`` [B] (the decoder terms) gives the batch, dtype and
    device of the zeros when T = 1. Returns (sum [B], standard error [B], batch mean of each
    term [T - 1] or None). One home for DDPM's and the discrete bounds."""
    if num_steps is not None and num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 for a standard error, got {num_steps}")
    if num_steps is not None and T < 2:
        raise ValueError("a process with T = 1 has no diffusion terms to subsample")
    batch, calls = like.shape[0], T - 1 if num_steps is None else num_steps
    with torch.no_grad(), tqdm(total=calls, desc="bound", disable=not progress) as bar:

        def at(k: Tensor) -> Tensor:
            bar.update(1)
            return term(k)

        if num_steps is None:
            per_step = [at(torch.full((batch,), k)) for k in range(2, T + 1)]
            if not per_step:
                return torch.zeros_like(like), torch.zeros_like(like), None
            stacked = torch.stack(per_step)
            return stacked.sum(0), torch.zeros_like(stacked[0]), stacked.mean(1)
        draws = torch.stack(
            [at(torch.randint(2, T + 1, (batch,), generator=generator)) for _ in range(num_steps)]
        )
    return (T - 1) * draws.mean(0), (T - 1) * draws.std(0) / math.sqrt(num_steps), None


def vlb(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    variance: ReverseVariance | str = ReverseVariance.BETA,
    levels: int = 256,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    **cond,
) -> Bound:
    """The discrete variational bound of ``x0`` [B, *D] in [-1, 1].

    ``num_steps=None`` sums all T - 1 diffusion terms (T denoiser calls); an integer m draws
    m steps uniformly from 2..T per sample and reports (T - 1) times their mean with its
    standard error (m >= 2; see ``diffusion_terms``); ``progress`` shows a bar over the
    denoiser calls.
    """
    schedule = discrete_schedule(denoiser)

    def noise() -> Tensor:
        return randn(x0.shape, generator, x0.dtype, x0.device)

    def term(k: Tensor) -> Tensor:
        return kl_term(denoiser, x0, k, noise(), variance=variance, **cond)

    with torch.no_grad():
        decoder = decoder_nll(denoiser, x0, noise(), variance=variance, levels=levels, **cond)
    diffusion, se, means = diffusion_terms(
        term, decoder, schedule.num_steps, num_steps, generator, progress
    )
    prior = schedule.prior_kl(x0).to(decoder.device)
    return Bound(prior, decoder, diffusion, se, means, x0[0].numel())
