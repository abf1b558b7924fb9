"""Masked diffusion in continuous time (Sahoo et al. 2024, MDLM; Shi et al. 2024, MD4): the
absorbing process with t in [0, 1] and its ELBO, a weighted cross-entropy on the masked
positions.

Each token of x0 in {0, ..., K-1} is kept with probability alpha(t) and replaced by [MASK]
(state K) otherwise, independently:

    q(x_t | x0) = alpha(t) e_{x0} + (1 - alpha(t)) e_K,   alpha(0) = 1, alpha(1) = alpha_1,

and from t back to s < t each masked token is unmasked with probability
(alpha(s) - alpha(t)) / (1 - alpha(t)) (the absorbing chain's Q_{s->t} keeps a token with
probability alpha(t) / alpha(s)). Masking schedules (``Masking``):

    linear       alpha = 1 - t                        (MD4)
    cosine       alpha = 1 - cos(pi/2 (1 - t))        (MD4's cosine; = 1 - sin(pi t / 2))
    polynomial   alpha = 1 - t^w                      (MD4; w = ``exponent``)
    loglinear    alpha = 1 - (1 - eps) t              (MDLM: total noise -log(1 - (1 - eps) t))

The ELBO (MDLM eq. 10, MD4 eq. 4), with the carry-over parameterisation (a model copies the
unmasked tokens and never predicts [MASK]):

    -log p(x0) <= L_1 + int_0^1 w(t) E_{q(x_t | x0)} [ sum_{i: x_t,i = K} -log p(x0_i | x_t) ] dt,
    w(t) = -alpha'(t) / (1 - alpha(t)),

where L_1 = KL(q(x_1 | x0) || prior) is 0 when alpha_1 = 0 (every token masked) and
alpha_1 log K per token for the loglinear schedule, whose prior puts alpha_1 / K on every
token and 1 - alpha_1 on [MASK]. Substituting a = alpha(t), the integral is the same for
every schedule (only the estimator's variance changes); with the exact denoiser it equals
-log p(x0) (the bound is the expected likelihood of an any-order autoregressive model, each
order exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rediff._choices import Choice
from rediff._tensor import Tensor, bits_per_dim
from rediff.discrete.denoiser import DiscreteDenoiser, DiscreteModel
from rediff.discrete.process import Kind, PerCoordinate, absorbing_matrix
from rediff.variational import Bound


class Masking(Choice, noun="masking schedule"):
    LINEAR = "linear"
    COSINE = "cosine"
    POLYNOMIAL = "polynomial"
    LOGLINEAR = "loglinear"


@dataclass(frozen=True)
class MaskedProcess(PerCoordinate):
    """The continuous-time absorbing process over ``categories`` = K tokens with a masking
    schedule (``exponent``: the polynomial's w; ``eps``: the loglinear's alpha_1). Times are
    floats in [0, 1]; state K is [MASK]."""

    categories: int
    masking: Masking = Masking.LINEAR
    exponent: float = 2.0
    eps: float = 1e-3

    kind = Kind.ABSORBING
    carries_over = True
    ordinal = False
    end = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "masking", Masking.parse(self.masking))
        if isinstance(self.categories, bool) or not isinstance(self.categories, int):
            raise ValueError(f"categories must be an integer, got {self.categories!r}")
        if self.categories < 2:
            raise ValueError(f"masked diffusion needs at least 2 tokens, got {self.categories}")
        if not (math.isfinite(self.exponent) and self.exponent > 0):
            raise ValueError(f"the polynomial exponent must be > 0, got {self.exponent}")
        if not 0.0 <= self.eps < 1.0:
            raise ValueError(f"the loglinear eps must lie in [0, 1), got {self.eps}")

    def __repr__(self) -> str:
        return f"MaskedProcess(K={self.categories}, {self.masking.value})"

    @property
    def num_states(self) -> int:
        return self.categories + 1

    @property
    def mask(self) -> int:
        return self.categories

    # ---- the schedule ------------------------------------------------------------------------

    def alpha(self, t: Tensor | float) -> Tensor:
        """alpha(t), the probability that a token is still unmasked at t: float64."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.masking is Masking.LINEAR:
            return 1.0 - t
        if self.masking is Masking.COSINE:  # exactly 1 at t = 0 and 0 at t = 1
            return 1.0 - torch.sin(math.pi / 2 * t)
        if self.masking is Masking.POLYNOMIAL:
            return 1.0 - t**self.exponent
        return 1.0 - (1.0 - self.eps) * t

    def time_of(self, alpha: Tensor) -> Tensor:
        """The time t at which alpha(t) = ``alpha`` (alpha in [alpha_1, 1]): float64."""
        alpha = torch.as_tensor(alpha, dtype=torch.float64)
        if self.masking is Masking.LINEAR:
            return 1.0 - alpha
        if self.masking is Masking.COSINE:
            return torch.asin((1.0 - alpha).clamp(0.0, 1.0)) * (2 / math.pi)
        if self.masking is Masking.POLYNOMIAL:
            return (1.0 - alpha).clamp_min(0.0) ** (1.0 / self.exponent)
        return ((1.0 - alpha) / (1.0 - self.eps)).clamp(0.0, 1.0)

    def weight(self, t: Tensor | float) -> Tensor:
        """w(t) = -alpha'(t) / (1 - alpha(t)), the ELBO's weight of the masked cross-entropy
        (infinite at t = 0, where nothing is masked): float64."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.masking is Masking.COSINE:
            return math.pi / 2 / torch.tan(math.pi / 2 * t)
        if self.masking is Masking.POLYNOMIAL:
            return self.exponent / t
        return 1.0 / t  # linear and loglinear: (1 - eps) / ((1 - eps) t)

    # ---- what PerCoordinate and the samplers ask of a process --------------------------------

    def _batch_times(self, t: float | Tensor, x0: Tensor) -> Tensor:
        times = torch.as_tensor(t, dtype=torch.float64).cpu()
        if times.numel() and (bool((times < 0).any()) or bool((times > 1).any())):
            raise ValueError(f"masked diffusion times lie in [0, 1], got {t!r}")
        return times.expand(x0.shape[0]) if times.ndim == 0 else times

    def cumulative(self, t: float | Tensor) -> Tensor:
        """Qbar_t: [S, S] (or [B, S, S] for t: [B]); row i is q(x_t | x0 = i)."""
        return absorbing_matrix(self.categories, self.alpha(t))

    def transition(self, s: float, t: float) -> Tensor:
        """Q_{s->t}, [S, S]: a token unmasked at s is kept with probability alpha(t) /
        alpha(s) (0 <= s < t <= 1)."""
        if not 0.0 <= s < t <= 1.0:
            raise ValueError(f"a transition needs 0 <= s < t <= 1, got s = {s}, t = {t}")
        return absorbing_matrix(self.categories, self.alpha(t) / self.alpha(s))

    def prior(self) -> Tensor:
        """q(x_1), float64 [S]: [MASK] with probability 1 - alpha_1, each token alpha_1 / K."""
        alpha_1 = float(self.alpha(1.0))
        probs = torch.full((self.num_states,), alpha_1 / self.categories, dtype=torch.float64)
        probs[self.mask] = 1.0 - alpha_1
        return probs

    def time_input(self, t: Tensor) -> Tensor:
        """What a network is told of time t: t itself, float32."""
        return t.float()

    def grid(self, steps: int | None = None) -> list[float]:
        """``steps`` + 1 times from 1 down to 0, evenly spaced (default 1000 steps)."""
        steps = 1000 if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        return [(steps - i) / steps for i in range(steps + 1)]


def stratified_times(n: int, generator: torch.Generator | None = None) -> Tensor:
    """n low-discrepancy times in (0, 1], float64 [n]: t_j = 1 - ((u + j / n) mod 1) for one
    uniform u (MDLM's antithetic sampler: each is uniform, and together they cover [0, 1]
    evenly, which lowers the variance of the ELBO's estimate)."""
    u = torch.rand((), generator=generator, dtype=torch.float64)
    return 1.0 - torch.remainder(u + torch.arange(n, dtype=torch.float64) / n, 1.0)


def token_nll(x0: Tensor, logits: Tensor, where: Tensor | None = None) -> Tensor:
    """sum over the positions ``where`` is True (None: all) of -log p(x0_i) under ``logits``
    [B, *D, K]: nats [B], float64."""
    log_probs = torch.log_softmax(logits.to(torch.float64), dim=-1)
    picked = log_probs.gather(-1, x0.long()[..., None])[..., 0]
    if where is not None:
        picked = torch.where(where, picked, torch.zeros_like(picked))
    return -picked.reshape(x0.shape[0], -1).sum(1)


class MaskDraws(Choice, noun="loss.mask_draws"):
    """How one draw of the ELBO's integrand is made (both unbiased for the same ELBO):

    - ``count``: the number masked k uniform on 1..L, k random tokens masked, t from its
      law given k; weight L c_k (``count_weights``), at most L: finite variance.
    - ``time``: t uniform (MDLM eq. 10), each token masked with probability 1 - alpha(t);
      weight w(t) ~ 1 / t near 0, so the draws are heavy-tailed (their variance diverges
      logarithmically at t = 0).
    """

    COUNT = "count"
    TIME = "time"


def count_weights(process: MaskedProcess, length: int) -> Tensor:
    """The ELBO's weight of the masked cross-entropy given that k of ``length`` tokens are
    masked, k = 1..L: C(L, k) int w(t) (1 - alpha)^k alpha^(L - k) dt, which is
    (1 - I_{alpha_1}(L - k + 1, k)) / k (substituting a = alpha(t); I the regularised
    incomplete beta function): 1 / k when alpha_1 = 0. Float64 [L]."""
    from scipy.special import betainc

    k = torch.arange(1, length + 1, dtype=torch.float64)
    alpha_1 = float(process.alpha(1.0))
    covered = 1.0 - torch.from_numpy(betainc(length - k.numpy() + 1, k.numpy(), alpha_1))
    return covered / k


def _alpha_given_count(process: MaskedProcess, k: Tensor, length: int, u: Tensor) -> Tensor:
    """alpha(t) drawn from its law given k masked tokens, density proportional to
    (1 - a)^(k - 1) a^(L - k) on [alpha_1, 1] (a Beta(L - k + 1, k) truncated), by the
    inverse CDF of uniforms u: float64 like k."""
    from scipy.special import betainc, betaincinv

    a, b = (length - k + 1).numpy(), k.numpy()
    low = betainc(a, b, float(process.alpha(1.0)))
    return torch.from_numpy(betaincinv(a, b, low + u.numpy() * (1.0 - low)))


def draw_by_count(
    process: MaskedProcess, x0: Tensor, fraction: Tensor, generator: torch.Generator | None
) -> dict[str, Tensor]:
    """One ``count`` draw per sample of x0 [B, *D] (L tokens each) with k = 1 + floor(fraction
    L) masked, fraction [B] in [0, 1): times ``t`` [B], the ``masked`` positions and the
    weights ``scale`` = L c_k [B]."""
    B, L = x0.shape[0], x0[0].numel()
    k = (fraction * L).long().clamp(max=L - 1) + 1
    u = torch.rand(B, generator=generator, dtype=torch.float64)
    t = process.time_of(_alpha_given_count(process, k.double(), L, u))
    rank = torch.rand(B, L, generator=generator).argsort(1).argsort(1)
    masked = (rank < k[:, None]).reshape(x0.shape)
    scale = L * count_weights(process, L)[k - 1]
    return {"t": t.to(x0.device), "masked": masked.to(x0.device), "scale": scale.to(x0.device)}


def draw_by_time(
    process: MaskedProcess, x0: Tensor, t: Tensor, generator: torch.Generator | None
) -> dict[str, Tensor]:
    """One ``time`` draw per sample of x0 [B, *D] at times t [B] in (0, 1]: each token masked
    with probability 1 - alpha(t), weights ``scale`` = w(t)."""
    keep = process.alpha(t).reshape(-1, *[1] * (x0.ndim - 1))
    masked = torch.rand(x0.shape, generator=generator, dtype=torch.float64) < 1.0 - keep
    return {
        "t": t.to(x0.device),
        "masked": masked.to(x0.device),
        "scale": process.weight(t).to(x0.device),
    }


def weighted_nll(denoiser: DiscreteDenoiser, x0: Tensor, draws: dict[str, Tensor], **cond):
    """scale times the masked cross-entropy of the denoiser at x_t = x0 with the ``masked``
    positions replaced by [MASK]: one draw of the ELBO's integrand per sample, nats [B]
    (0 where nothing is masked, whatever the weight)."""
    masked = draws["masked"]
    x_t = torch.where(masked, denoiser.process.mask, x0)
    ce = token_nll(x0, denoiser(x_t, draws["t"].float(), **cond), masked)
    scale = draws["scale"].to(ce.device)
    return torch.where(ce > 0, scale, torch.zeros_like(scale)) * ce


def elbo(
    denoiser: DiscreteDenoiser,
    x0: Tensor,
    *,
    samples: int = 16,
    generator: torch.Generator | None = None,
    progress: bool = False,
    **cond,
) -> Bound:
    """The masked-diffusion ELBO of ``x0`` [B, *D] (L tokens 0..K-1 per sample), estimated
    per sample from ``samples`` = m ``count`` draws (``MaskDraws``: the time integral split
    by the number k of masked tokens,

        ELBO = L_1 + sum_k c_k E[ masked cross-entropy | k ],   c_k = ``count_weights``,

    k stratified over 1..L across the m draws, t from its law given k so that a
    time-conditioned net sees the times q gives it): unbiased, each draw at most L max CE,
    reported with the standard error of the m draws' mean (m >= 2). As a
    ``variational.Bound``: ``prior`` L_1, ``decoder`` 0 (the integral includes the last
    unmasking), ``diffusion`` the integral; ``bits_per_dim`` is bits per token.
    ``progress`` shows a bar over the m denoiser calls."""
    process = denoiser.process
    if not isinstance(process, MaskedProcess):
        raise ValueError(f"the masked ELBO needs a MaskedProcess, got {process!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples must be an integer >= 2 (for a standard error), got {samples}")
    x0 = process.check_data(x0)
    B, L = x0.shape[0], x0[0].numel()
    fractions = torch.stack([1.0 - stratified_times(samples, generator) for _ in range(B)], 1)
    with torch.no_grad():
        terms = [
            weighted_nll(denoiser, x0, draw_by_count(process, x0, fractions[j], generator), **cond)
            for j in tqdm(range(samples), desc="elbo", disable=not progress)
        ]
    draws = torch.stack(terms)
    prior = process.prior_kl(x0).to(draws.device)
    se = draws.std(0) / math.sqrt(samples)
    return Bound(prior, torch.zeros_like(prior), draws.mean(0), se, None, L)


@dataclass(frozen=True)
class MaskedObjective:
    """The masked-diffusion ELBO as a training loss (``loss.kind = "masked"``): per batch,
    one draw per sample (``draw``), stratified over the batch (``stratified_times``): the
    number masked (``count``, the default) or the time (``time``, MDLM's estimator);
    ``__call__`` is L_1 + the weighted masked cross-entropy, in bits per token (its mean is
    the ELBO for either kind of draw)."""

    draws: MaskDraws = MaskDraws.COUNT

    def __post_init__(self) -> None:
        object.__setattr__(self, "draws", MaskDraws.parse(self.draws))

    def check_model(self, model) -> None:
        if not (isinstance(model, DiscreteModel) and isinstance(model.process, MaskedProcess)):
            raise ValueError(
                f"loss 'masked' trains a masked diffusion model, got a {type(model).__name__}"
            )

    def check_data(self, x: Tensor) -> None:
        if x.is_floating_point():
            raise ValueError("masked diffusion trains on integer tokens, got float data")

    def draw(
        self, process: MaskedProcess, x0: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Times, masks and weights for the batch x0 [B, *D] (per sample along dim 0)."""
        spread = stratified_times(x0.shape[0], generator)
        if self.draws is MaskDraws.TIME:
            return draw_by_time(process, x0, spread, generator)
        return draw_by_count(process, x0, 1.0 - spread, generator)

    def __call__(self, model: DiscreteModel, x0: Tensor, draws: dict[str, Tensor], **cond):
        """The batch-mean loss in bits per token (one network evaluation)."""
        nats = model.process.prior_kl(x0) + weighted_nll(model, x0, draws, **cond)
        return bits_per_dim(nats, x0).mean().float()


__all__ = [
    "MaskDraws",
    "MaskedObjective",
    "MaskedProcess",
    "Masking",
    "count_weights",
    "draw_by_count",
    "draw_by_time",
    "elbo",
    "stratified_times",
    "token_nll",
    "weighted_nll",
]
