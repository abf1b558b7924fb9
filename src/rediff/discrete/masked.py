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
from rediff._tensor import Tensor
from rediff.discrete.denoiser import DiscreteDenoiser, DiscreteModel
from rediff.discrete.process import Kind, PerCoordinate, absorbing_matrix
from rediff.losses import Loss
from rediff.variational import Bound

_LN2 = math.log(2.0)


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

    def mask_tokens(self, x0: Tensor, t: Tensor, u: Tensor) -> Tensor:
        """x_t from x0 [B, *D], times t [B] and uniforms u [B, *D]: token i masked where
        u_i < 1 - alpha(t)."""
        keep = self.alpha(t).to(x0.device).reshape(-1, *[1] * (x0.ndim - 1))
        return torch.where(u.to(x0.device, keep.dtype) < 1.0 - keep, self.mask, x0)


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


def elbo_terms(denoiser: DiscreteDenoiser, x0: Tensor, t: Tensor, u: Tensor, **cond) -> Tensor:
    """w(t) times the masked cross-entropy at x_t = mask_tokens(x0, t, u): one draw of the
    ELBO's integrand per sample, nats [B] (t: [B] in (0, 1])."""
    process = denoiser.process
    x_t = process.mask_tokens(x0, t, u)
    ce = token_nll(x0, denoiser(x_t, t.float(), **cond), x_t == process.mask)
    weight = process.weight(t).to(ce.device)
    return torch.where(ce > 0, weight, torch.zeros_like(weight)) * ce  # nothing masked: 0


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
    """alpha(t) drawn from its distribution given k masked tokens, density proportional to
    (1 - a)^(k - 1) a^(L - k) on [alpha_1, 1] (a Beta(L - k + 1, k) truncated), by the
    inverse CDF of uniforms u: float64 like k."""
    from scipy.special import betainc, betaincinv

    a, b = (length - k + 1).numpy(), k.numpy()
    low = betainc(a, b, float(process.alpha(1.0)))
    return torch.from_numpy(betaincinv(a, b, low + u.numpy() * (1.0 - low)))


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
    per sample from ``samples`` = m draws with finite variance: the time integral is split
    by the number k of masked tokens,

        ELBO = L_1 + sum_k c_k E[ masked cross-entropy | k ],   c_k = ``count_weights``,

    and each draw takes k from 1..L (stratified over the m draws), k random tokens masked,
    and t from its distribution given k (so a time-conditioned net sees the times it would
    under q): L c_k times the masked cross-entropy, unbiased. (The same integral drawn as
    uniform t with Bernoulli masks, the training loss, has heavy tails from w(t) ~ 1 / t:
    its variance diverges logarithmically at t = 0.) Reported with the standard error of the
    m draws' mean (m >= 2). As a ``variational.Bound``: ``prior`` L_1, ``decoder`` 0 (the
    integral includes the last unmasking), ``diffusion`` the integral; ``bits_per_dim`` is
    bits per token. ``progress`` shows a bar over the m denoiser calls."""
    process = denoiser.process
    if not isinstance(process, MaskedProcess):
        raise ValueError(f"the masked ELBO needs a MaskedProcess, got {process!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples must be an integer >= 2 (for a standard error), got {samples}")
    x0 = process.check_data(x0)
    B, L = x0.shape[0], x0[0].numel()
    weights = count_weights(process, L)
    fractions = torch.stack([1.0 - stratified_times(samples, generator) for _ in range(B)], 1)
    draws = []
    with torch.no_grad():
        for j in tqdm(range(samples), desc="elbo", disable=not progress):
            k = (fractions[j] * L).long() + 1  # uniform on 1..L, stratified over the draws
            u = torch.rand(B, generator=generator, dtype=torch.float64)
            t = process.time_of(_alpha_given_count(process, k.double(), L, u))
            order = torch.rand(B, L, generator=generator).argsort(1).argsort(1)
            masked = (order < k[:, None]).reshape(x0.shape).to(x0.device)
            x_t = torch.where(masked, process.mask, x0)
            ce = token_nll(x0, denoiser(x_t, t.float(), **cond), masked)
            draws.append(L * weights[k - 1].to(ce.device) * ce)
    draws = torch.stack(draws)
    prior = process.prior_kl(x0).to(draws.device)
    se = draws.std(0) / math.sqrt(samples)
    return Bound(prior, torch.zeros_like(prior), draws.mean(0), se, None, L)


@dataclass(frozen=True)
class MaskedObjective:
    """The masked-diffusion ELBO as a training loss (``loss.kind = "masked"``): per batch,
    stratified times t [B] (``stratified_times``) and uniforms u [B, *D] that pick the masks
    (``draw``); ``__call__`` is L_1 + w(t) times the masked cross-entropy, in bits per token
    (its mean over t is the ELBO)."""

    kind: Loss = Loss.MASKED

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
        t = stratified_times(x0.shape[0], generator)
        u = torch.rand(x0.shape, generator=generator, dtype=torch.float64)
        return {"t": t.to(x0.device), "u": u.to(x0.device)}

    def __call__(self, model: DiscreteModel, x0: Tensor, draws: dict[str, Tensor], **cond):
        """The batch-mean loss in bits per token (one network evaluation)."""
        process = model.process
        nats = process.prior_kl(x0) + elbo_terms(model, x0, draws["t"], draws["u"], **cond)
        return (nats / (x0[0].numel() * _LN2)).mean().float()


__all__ = [
    "MaskedObjective",
    "MaskedProcess",
    "Masking",
    "count_weights",
    "elbo",
    "elbo_terms",
    "stratified_times",
    "token_nll",
]
