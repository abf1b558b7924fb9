"""Training objectives, separate from models: the denoising loss (any prediction target, any
weighting, any time sampler), DDPM's variational bound and the hybrid, and score matching
(sliced and exact), and the cross-entropy of a noise-conditional classifier (for classifier
guidance). ``Objective`` bundles one of them with its draws for the training loop.

Every target is affine in (x_t, x0) with x0-coefficient b (``rediff.parametrization``), so
an error in the network's target is an error in x0_hat scaled by b:

    |target_hat - target|^2 = b(alpha, sigma)^2 |x0_hat - x0|^2.

A weighting is therefore one function w(t) in x0 space, and the loss is computed on the
network's own output, rescaled by w / b^2 (which is 1 when the weighting is the target's own
"simple" loss). Samplers of t and the loss are separate from the model.

| weighting    | w(t) in x0 space                 | source                                    |
|--------------|----------------------------------|-------------------------------------------|
| `simple`     | b_target^2 (plain MSE on target) | Ho et al. 2020, eq. 14 (eps target)       |
| `snr`        | alpha^2 / sigma^2                | = eps-MSE = sigma^2-weighted DSM (NCSN)   |
| `x0`         | 1                                | x0-MSE                                    |
| `edm`        | 1 / c_out^2 = (s^2+sd^2)/(s sd)^2| Karras et al. 2022, table 1               |
| `likelihood` | g(t)^2 alpha^2 / sigma^4         | Song et al. 2021b, eq. 9 (score-MSE * g^2)|

Times: the weightings are defined for t uniform on [t_min, t_max]. ``time_sampler =
"importance"`` draws t with density proportional to g(t)^2 / sigma(t)^2 (Song et al. 2021b,
section 5: importance sampling of the likelihood weighting) and divides each sample's weight
by that density over the uniform one, so every weighting keeps its expectation. Since
g^2 = -sigma^2 d lambda / dt for any (alpha, sigma) (lambda = log-SNR), that density is
uniform in lambda, drawn by its closed-form inverse CDF t = lambda^-1(lambda(t_min) + u
(lambda(t_max) - lambda(t_min))); with the likelihood weighting the reweighted loss is
(lambda(t_min) - lambda(t_max)) / (t_max - t_min) x the plain eps-MSE.

Higher orders (Lu et al. 2022, "Maximum Likelihood Training for Score-Based Diffusion ODEs by
High-Order Denoising Score Matching"): the ODE's likelihood also depends on the Jacobian of
the score and its derivative. ``loss.kind = "dsm2"`` adds the second-order DSM, ``"dsm3"``
also the third (``high_order_loss``), to the first-order loss above; the lower orders are
stop-gradiented inside each higher-order term, as in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rediff import divergence, variational
from rediff._choices import Choice
from rediff._tensor import Tensor, check_finite, expand_to, randn, sum_except_batch
from rediff.model import DiffusionModel, NoisyClassifier
from rediff.parametrization import Target, coefficients
from rediff.schedules import DiscreteVP, Schedule


class Weighting(Choice):
    """The loss weighting over noise levels (see the module table)."""

    SIMPLE = "simple"
    SNR = "snr"
    X0 = "x0"
    EDM = "edm"
    LIKELIHOOD = "likelihood"


class TimeSampler(Choice):
    """How training times are drawn: DDPM's uniform integer steps (DiscreteVP), uniform t in
    [t_min, t_max], EDM's log-normal noise level ln s ~ N(p_mean, p_std^2), or SD3's
    logit-normal times logit(t) ~ N(0, 1) (Esser et al. 2024, eq. 19: more weight on the
    middle of the path; flow matching) or its mode sampling t = 1 - u - s (cos^2(pi u / 2)
    - 1 + u), u ~ U(0, 1), s = MODE_SCALE (eq. 20), or the likelihood weighting's importance
    sampler (density g^2 / sigma^2: uniform in log-SNR; see the module docstring)."""

    STEPS = "steps"
    UNIFORM = "uniform"
    LOGNORMAL = "lognormal"
    LOGIT_NORMAL = "logit_normal"
    MODE = "mode"
    IMPORTANCE = "importance"


#: SD3's scale of mode sampling (Esser et al. 2024, section 3.1: s = 1.29 in their runs);
#: t(u) stays decreasing in u for s in [-1, 2 / (pi - 2)]
MODE_SCALE = 1.29


@dataclass(frozen=True)
class LogNormal:
    """EDM's training distribution of noise levels (Karras et al. 2022, table 1)."""

    p_mean: float = -1.2
    p_std: float = 1.2


def check_time_sampler(schedule: Schedule, sampler: TimeSampler | str) -> TimeSampler:
    """``sampler`` parsed, or a ValueError if ``schedule`` cannot use it ('steps' draws DDPM's
    integer steps: DiscreteVP only)."""
    sampler = TimeSampler.parse(sampler)
    if sampler is TimeSampler.STEPS and not isinstance(schedule, DiscreteVP):
        raise ValueError(
            f"time sampler 'steps' draws DDPM's integer steps and needs a DiscreteVP, got "
            f"{type(schedule).__name__}; use 'uniform', 'lognormal', 'logit_normal' or 'mode'"
        )
    return sampler


def sample_times(
    schedule: Schedule,
    n: int,
    sampler: TimeSampler | str = TimeSampler.UNIFORM,
    *,
    generator: torch.Generator | None = None,
    lognormal: LogNormal = LogNormal(),
    device: torch.device | str | None = None,
) -> Tensor:
    """n training times (float64 [n]) from ``sampler``."""
    sampler = check_time_sampler(schedule, sampler)
    if sampler is TimeSampler.STEPS:
        k = torch.randint(1, schedule.num_steps + 1, (n,), generator=generator)
        return (k.double() / schedule.num_steps).to(device)
    if sampler in (TimeSampler.UNIFORM, TimeSampler.MODE):
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        if sampler is TimeSampler.MODE:
            t = 1 - u - MODE_SCALE * (torch.cos(0.5 * math.pi * u).square() - 1 + u)
            return t.clamp(schedule.t_min, schedule.t_max).to(device)
        return (schedule.t_min + (schedule.t_max - schedule.t_min) * u).to(device)
    if sampler is TimeSampler.IMPORTANCE:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        high, low = schedule.log_snr(schedule.t_min), schedule.log_snr(schedule.t_max)
        return schedule.t_from_log_snr(high + u * (low - high)).to(device)
    z = torch.randn(n, generator=generator, dtype=torch.float64)
    if sampler is TimeSampler.LOGIT_NORMAL:
        return torch.sigmoid(z).clamp(schedule.t_min, schedule.t_max).to(device)
    level = torch.exp(lognormal.p_mean + lognormal.p_std * z)
    lo, hi = schedule.noise_level(schedule.t_min), schedule.noise_level(schedule.t_max)
    return schedule.t_from_noise_level(level.clamp(float(lo), float(hi))).to(device)


def x0_weight(
    weighting: Weighting | str, model: DiffusionModel, t: Tensor, alpha: Tensor, sigma: Tensor
) -> Tensor:
    """w(t) of the module table, float64 [B]."""
    weighting = Weighting.parse(weighting)
    if weighting is Weighting.SIMPLE:
        return coefficients(model.target, alpha, sigma, model.sigma_data)[1].square()
    if weighting is Weighting.SNR:
        return (alpha / sigma).square()
    if weighting is Weighting.X0:
        return torch.ones_like(alpha)
    if weighting is Weighting.EDM:
        return coefficients(Target.EDM, alpha, sigma, model.sigma_data)[1].square()
    g2 = model.schedule.diffusion_squared(t)
    return g2 * alpha.square() / sigma.pow(4)


def importance_weight(schedule: Schedule, t: Tensor) -> Tensor:
    """The uniform density 1 / (t_max - t_min) over the importance sampler's density
    -lambda'(t) / (lambda(t_min) - lambda(t_max)) at t (float64 [B]): the factor that keeps
    a weighting's expectation under ``TimeSampler.IMPORTANCE``."""
    span = schedule.log_snr(schedule.t_min) - schedule.log_snr(schedule.t_max)
    rate = schedule.diffusion_squared(t) / schedule.sigma(t).square()  # -d lambda / dt
    return span / ((schedule.t_max - schedule.t_min) * rate)


def _checked_times(schedule: Schedule, x0: Tensor, t: Tensor) -> Tensor:
    return schedule.check_t(
        torch.as_tensor(t, dtype=torch.float64, device=x0.device), allow_zero=False
    )


def denoising_loss(
    model: DiffusionModel,
    x0: Tensor,
    *,
    weighting: Weighting | str = Weighting.SIMPLE,
    time_sampler: TimeSampler | str = TimeSampler.UNIFORM,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    **cond,
) -> Tensor:
    """Mean over the batch of (w / b^2) * mean_dims |net(x_t) - target(x0, eps)|^2.

    Args:
        model: the DiffusionModel being trained (its target decides what the net outputs).
        x0: clean data [B, *D].
        weighting: see ``Weighting``; time_sampler: see ``TimeSampler`` (draws t unless
            given; 'importance' also reweights, see ``importance_weight``).
        t, noise: optional fixed times [B] and noise [B, *D] (drawn from ``generator`` if not).
        cond: conditioning passed to the network (e.g. labels).
    """
    check_finite("x0", x0)
    schedule = model.schedule
    if t is None:
        t = sample_times(schedule, x0.shape[0], time_sampler, generator=generator, device=x0.device)
    t = _checked_times(schedule, x0, t)
    if noise is None:
        noise = randn(x0.shape, generator, x0.dtype, x0.device)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    x_t = schedule.marginal(x0, t, noise)
    prediction = model.target_prediction(x_t, t, **cond)
    a, b = coefficients(model.target, alpha, sigma, model.sigma_data)
    truth = expand_to(a, x_t) * x_t + expand_to(b, x0) * x0
    scale = x0_weight(weighting, model, t, alpha, sigma) / b.square()
    if TimeSampler.parse(time_sampler) is TimeSampler.IMPORTANCE:
        scale = scale * importance_weight(schedule, t)
    per_sample = (prediction - truth).square().reshape(x0.shape[0], -1).mean(dim=1)
    return (scale.to(per_sample.dtype) * per_sample).mean()


def vlb_loss(
    model: DiffusionModel,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    *,
    variance: variational.ReverseVariance | str = variational.ReverseVariance.BETA,
    levels: int = 256,
    detach_mean: bool = False,
    **cond,
) -> Tensor:
    """The discrete variational bound in bits per dimension, estimated from one step per
    sample: L_T + T L_{k-1}, k = T t uniform on 1..T (``rediff.variational``), batch mean. Its
    expectation over k is the whole bound, so it trains what ``rediff.vlb`` reports.
    ``detach_mean`` lets only a learned variance learn from it (the hybrid loss)."""
    schedule = variational.discrete_schedule(model)
    k = torch.round(_checked_times(schedule, x0, t) * schedule.num_steps).long()
    terms = variational.step_terms(
        model, x0, k, noise, variance=variance, levels=levels, detach_mean=detach_mean, **cond
    )
    total = schedule.prior_kl(x0).to(terms.device) + schedule.num_steps * terms
    return (total / (x0[0].numel() * math.log(2.0))).mean()


def score_matching_loss(
    model: DiffusionModel,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    probes: Tensor | None = None,
    **cond,
) -> Tensor:
    """Score matching on the noised data x_t ~ q_t (Hyvarinen 2005; with sigma^2 weighting as
    in NCSN, Song & Ermon 2019), per dimension and batch mean:

        sigma(t)^2 [tr(d s / d x_t) + |s(x_t, t)|^2 / 2] / d,

    minimised by the score of q_t. ``probes=None`` takes the exact trace (d backward passes:
    low-dimensional data); probes [n, B, *D] give sliced score matching with variance
    reduction (Song et al. 2019, eq. 8), the trace replaced by its Hutchinson estimate.
    """
    t = _checked_times(model.schedule, x0, t)
    x_t = model.schedule.marginal(x0, t, noise).detach().requires_grad_(True)
    score = model.predict(x_t, t, **cond).score
    trace = (
        divergence.exact(score, x_t, create_graph=True)
        if probes is None
        else divergence.hutchinson(score, x_t, probes, create_graph=True)
    )
    sigma2 = model.schedule.sigma(t).square().to(score.dtype)
    per_sample = sigma2 * (trace + 0.5 * sum_except_batch(score.square()))
    return (per_sample / x0[0].numel()).mean()


def _vjp(output: Tensor, x: Tensor, v: Tensor) -> Tensor:
    """v^T d output / d x per sample (reverse mode, graph kept for training)."""
    return torch.autograd.grad((output * v).sum(), x, create_graph=True)[0]


def high_order_loss(
    model: DiffusionModel, x0: Tensor, t: Tensor, noise: Tensor, probes: Tensor, order: int
) -> Tensor:
    """Lu et al. 2022's second- (and with ``order`` = 3 third-) order denoising score matching,
    per dimension and batch mean, with one Rademacher probe v [1, B, *D] per sample.

    With h = sigma s1 + eps (s1 the model's score, stop-gradiented) the conditional moments of
    the noise give, for the true score s (Tweedie's formula to second and third order; Meng et
    al. 2021):

        E[h h^T | x_t] = sigma^2 grad s + I,    E[(h.v)^2 h | x_t] = -sigma^3 grad (v^T grad s v).

    Second order: |sigma^2 J^T v + v - (h.v) h|^2 (the Frobenius residual, probed by v; J the
    Jacobian of the model's score, J^T v by one reverse-mode product, which has the same
    expected square norm as J v) plus the trace residual (sigma^2 v^T J v + |v|^2 - (h.v)^2)^2,
    both / d^2. Third order: |sigma^3 grad(v^T J v) + (h.v)^2 h - (sigma^2 v^T J v + |v|^2) h
    - 2 (h.v)(sigma^2 J^T v + v)|^2 / d^2, the last two terms zero-mean controls at the exact
    model, with v^T J v and J^T v stop-gradiented. Each is minimised in expectation by the
    true higher-order scores (tested on mixtures with closed-form derivatives)."""
    t = _checked_times(model.schedule, x0, t)
    x_t = model.schedule.marginal(x0, t, noise).detach().requires_grad_(True)
    sigma = model.schedule.sigma(t).to(x_t.dtype)  # [B]
    s2 = expand_to(sigma.square(), x_t)
    score = model.predict(x_t, t).score
    v, d = probes[0], x0[0].numel()
    h = (expand_to(sigma, x_t) * score + noise).detach()
    jv = _vjp(score, x_t, v)  # J^T v
    hv, vv, vjv = (sum_except_batch(a * b) for a, b in ((h, v), (v, v), (jv, v)))  # [B]
    frobenius = s2 * jv + v - expand_to(hv, h) * h
    trace = sigma.square() * vjv + vv - hv.square()
    per_sample = sum_except_batch(frobenius.square()) + trace.square()
    if order == 3:
        grad = torch.autograd.grad(vjv.sum(), x_t, create_graph=True)[0]  # grad(v^T J v)
        third = (
            expand_to(sigma.pow(3), x_t) * grad
            + expand_to(hv.square(), h) * h
            - expand_to(sigma.square() * vjv.detach() + vv, h) * h
            - 2.0 * expand_to(hv, h) * (s2 * jv.detach() + v)
        )
        per_sample = per_sample + sum_except_batch(third.square())
    return (per_sample / d**2).mean()


def classifier_loss(
    classifier: NoisyClassifier, x0: Tensor, t: Tensor, noise: Tensor, labels: Tensor
) -> Tensor:
    """Cross-entropy -log p(y | x_t) of a classifier of noised data x_t ~ q(x_t | x0) at times
    t, batch mean (Dhariwal & Nichol 2021, section 4: the classifier of classifier guidance
    is trained on the forward process's noised samples)."""
    t = _checked_times(classifier.schedule, x0, t)
    x_t = classifier.schedule.marginal(x0, t, noise)
    return -classifier(x_t, t, labels).mean()


class Loss(Choice):
    """The training objective of ``Objective``."""

    DENOISING = "denoising"
    VLB = "vlb"
    # denoising (simple) + vlb_weight * vlb through the learned variance only (Nichol &
    # Dhariwal 2021, eq. 16 and section 3.1)
    HYBRID = "hybrid"
    SLICED_SM = "sliced_sm"
    EXACT_SM = "exact_sm"
    # the denoising loss + Lu et al. 2022's second (and third) order DSM (high_order_loss)
    DSM2 = "dsm2"
    DSM3 = "dsm3"
    CLASSIFIER = "classifier"  # trains a NoisyClassifier, not a denoiser
    # discrete processes (rediff.discrete.bound.DiscreteObjective): the bound, the auxiliary
    # cross-entropy on x0, and the bound + ce_weight x the cross-entropy (Austin et al. 2021)
    DISCRETE_VLB = "discrete_vlb"
    DISCRETE_CE = "discrete_ce"
    DISCRETE_HYBRID = "discrete_hybrid"
    # masked diffusion in continuous time (rediff.discrete.masked.MaskedObjective: MDLM's ELBO)
    MASKED = "masked"
    # next-token cross-entropy of a causal model (rediff.discrete.autoregressive)
    AUTOREGRESSIVE = "autoregressive"
    # the bound of an insertion/deletion model (rediff.discrete.insdel_model.InsDelObjective)
    INSDEL = "insdel"

    @property
    def discrete(self) -> bool:
        """Whether this loss trains a model over categories."""
        over_tokens = (Loss.MASKED, Loss.AUTOREGRESSIVE, Loss.INSDEL)
        return self.value.startswith("discrete_") or self in over_tokens


@dataclass(frozen=True)
class Objective:
    """A training objective and the randomness it needs.

    ``draw`` makes every random input for a batch (times ``t``, ``noise`` and, for sliced
    score matching, ``probes``) and ``__call__`` is a deterministic function of them. The
    training loop draws for the global batch and hands each process its slice, so data-parallel
    training computes exactly what one process would.
    """

    kind: Loss | str = Loss.DENOISING
    weighting: Weighting | str = Weighting.SIMPLE
    time_sampler: TimeSampler | str = TimeSampler.UNIFORM
    vlb_weight: float = 1e-3
    variance: variational.ReverseVariance | str = variational.ReverseVariance.BETA
    levels: int = 256
    probes: int = 1
    probe: divergence.Probe | str = divergence.Probe.RADEMACHER

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Loss.parse(self.kind))
        object.__setattr__(self, "weighting", Weighting.parse(self.weighting))
        object.__setattr__(self, "time_sampler", TimeSampler.parse(self.time_sampler))
        object.__setattr__(self, "variance", variational.ReverseVariance.parse(self.variance))
        object.__setattr__(self, "probe", divergence.Probe.parse(self.probe))
        if self.kind.discrete:
            raise ValueError(
                f"loss {self.kind.value!r} trains discrete models: set schedule.kind to a "
                "discrete process (d3pm_uniform, d3pm_absorbing, d3pm_gaussian, d3pm_banded)"
            )
        if self.kind in (Loss.VLB, Loss.HYBRID) and self.time_sampler is not TimeSampler.STEPS:
            raise ValueError(
                f"loss {self.kind.value!r} estimates a sum over DDPM's steps: set "
                "time_sampler = 'steps'"
            )
        if self.kind is Loss.HYBRID and self.variance is not variational.ReverseVariance.LEARNED:
            raise ValueError(
                "the hybrid loss trains a learned reverse variance with the bound: set "
                "variance = 'learned' (and build the model with learned_variance)"
            )

    def check_model(self, model: DiffusionModel | NoisyClassifier) -> None:
        """Refuse a model this objective cannot train (before a run starts)."""
        check_time_sampler(model.schedule, self.time_sampler)
        if (self.kind is Loss.CLASSIFIER) != isinstance(model, NoisyClassifier):
            raise ValueError(
                "the classifier loss trains a NoisyClassifier and the other losses a "
                f"DiffusionModel; got loss {self.kind.value!r} and a {type(model).__name__}"
            )
        learned = self.variance is variational.ReverseVariance.LEARNED
        if learned and self.kind in (Loss.VLB, Loss.HYBRID) and not model.learned_variance:
            raise ValueError(
                "variance = 'learned' needs a model built with learned_variance "
                "(model.learned_variance = true)"
            )

    def check_data(self, x: Tensor) -> None:
        """Refuse training data this objective cannot use (before a run starts)."""
        check_finite("training data", x)
        if self.kind in (Loss.VLB, Loss.HYBRID):
            variational.check_data(x)

    def draw(
        self, schedule: Schedule, x0: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """The random inputs for a batch shaped like x0 (per-sample along dim 0 of each,
        except ``probes`` [n, B, *D], per-sample along dim 1)."""
        t = sample_times(schedule, x0.shape[0], self.time_sampler, generator=generator)
        noise = randn(x0.shape, generator, x0.dtype, x0.device)
        draws = {"t": t.to(x0.device), "noise": noise}
        if self.kind is Loss.SLICED_SM:
            draws["probes"] = divergence.draw_probes(x0, self.probes, self.probe, generator)
        if self.kind in (Loss.DSM2, Loss.DSM3):  # one Rademacher probe (Lu et al. 2022)
            draws["probes"] = divergence.draw_probes(x0, 1, divergence.Probe.RADEMACHER, generator)
        return draws

    def __call__(self, model: DiffusionModel, x0: Tensor, draws: dict[str, Tensor], **cond):
        """The batch-mean loss for data x0 and the inputs ``draws`` made by ``draw``."""
        t, noise = draws["t"], draws["noise"]
        if self.kind is Loss.CLASSIFIER:
            if "labels" not in cond:
                raise ValueError("the classifier loss needs labels (labelled data)")
            return classifier_loss(model, x0, t, noise, cond["labels"])
        if self.kind in (Loss.SLICED_SM, Loss.EXACT_SM):
            return score_matching_loss(model, x0, t, noise, draws.get("probes"), **cond)
        bound = (
            vlb_loss(
                model,
                x0,
                t,
                noise,
                variance=self.variance,
                levels=self.levels,
                detach_mean=self.kind is Loss.HYBRID,
                **cond,
            )
            if self.kind in (Loss.VLB, Loss.HYBRID)
            else None
        )
        if self.kind is Loss.VLB:
            return bound
        simple = denoising_loss(
            model,
            x0,
            weighting=self.weighting,
            time_sampler=self.time_sampler,
            t=t,
            noise=noise,
            **cond,
        )
        if self.kind in (Loss.DSM2, Loss.DSM3):
            order = 2 if self.kind is Loss.DSM2 else 3
            return simple + high_order_loss(model, x0, t, noise, draws["probes"], order)
        return simple if bound is None else simple + self.vlb_weight * bound
