"""The variational bound of a discrete diffusion model and its training objectives (Austin et
al. 2021, eq. 1 and section 3.4).

    -log p(x0) <= L_T + sum_{t=2}^{T} L_{t-1} + L_0,
    L_T     = KL(q(x_T | x0) || prior),
    L_{t-1} = E_q KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)),
    L_0     = -E_q log p(x0 | x_1).

The reverse step p(x_{t-1} | x_t) is the x0-parameterised mixture of posteriors
(``rediff.discrete.reverse``). Because q(x0 | x_1, x0) is the point mass at x0, L_0 is the
same KL at t = 1, so one function (``step_terms``) gives every term. Terms are nats per
sample, summed over dimensions; ``Bound.bits_per_dim`` divides by d ln 2.

Objectives (``DiscreteObjective``, one uniform t in 1..T per sample): ``discrete_vlb``
(L_T + T L_{t-1}: its mean is the bound), ``discrete_ce`` (the auxiliary -log p(x0 | x_t),
Austin's cross-entropy on x0) and ``discrete_hybrid`` (the bound + ``ce_weight`` times the
cross-entropy: Austin's L_vb + lambda E[-log p(x0 | x_t)]). Each is reported in bits per
dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rediff._tensor import Tensor, bits_per_dim
from rediff.discrete.denoiser import DiscreteDenoiser, DiscreteModel
from rediff.discrete.process import DiscreteProcess, categorical, kl
from rediff.discrete.reverse import posterior_probs, reverse_probs
from rediff.losses import Loss
from rediff.variational import Bound, diffusion_terms


def _sum_dims(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


def _terms(process: DiscreteProcess, x0: Tensor, t: Tensor, x_t: Tensor, logits: Tensor) -> Tensor:
    """The KL terms given the denoiser's logits at (x_t, t): nats [B]."""
    truth = posterior_probs(process, x_t, x0, t - 1, t)
    p0 = torch.softmax(logits.to(torch.float64), dim=-1)
    return _sum_dims(kl(truth, reverse_probs(process, x_t, p0, t - 1, t)))


def _cross_entropy(x0: Tensor, logits: Tensor) -> Tensor:
    """-log p(x0 | x_t) summed over dimensions, from the logits: nats [B]."""
    log_probs = torch.log_softmax(logits.to(torch.float64), dim=-1)
    return -_sum_dims(log_probs.gather(-1, x0.long()[..., None])[..., 0])


def _steps(t: int | Tensor, batch: int) -> Tensor:
    steps = torch.as_tensor(t).long().cpu()
    return steps.expand(batch) if steps.ndim == 0 else steps


def step_terms(
    denoiser: DiscreteDenoiser, x0: Tensor, t: int | Tensor, x_t: Tensor, **cond
) -> Tensor:
    """KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) per sample for one x_t: L_{t-1} for
    t >= 2 and L_0 = -log p(x0 | x_1) for t = 1; nats [B], float64 (t: int or [B])."""
    x0, t = denoiser.process.check_data(x0), _steps(t, x0.shape[0])
    return _terms(denoiser.process, x0, t, x_t, denoiser(x_t, t, **cond))


def cross_entropy(
    denoiser: DiscreteDenoiser, x0: Tensor, t: int | Tensor, x_t: Tensor, **cond
) -> Tensor:
    """-log p(x0 | x_t) per sample, summed over dimensions: nats [B] (Austin's auxiliary
    cross-entropy on x0)."""
    x0 = denoiser.process.check_data(x0)
    return _cross_entropy(x0, denoiser(x_t, _steps(t, x0.shape[0]), **cond))


def vlb(
    denoiser: DiscreteDenoiser,
    x0: Tensor,
    *,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    **cond,
) -> Bound:
    """The bound of ``x0`` [B, *D] (integers in 0..K-1): ``num_steps=None`` sums all T - 1
    diffusion terms (one draw of x_t each, T denoiser calls with the decoder); an integer m
    draws m steps uniformly from 2..T per sample and reports (T - 1) times their mean with
    its standard error (m >= 2; ``variational.diffusion_terms``, shared with DDPM's bound).
    Every term is evaluated under no_grad; ``progress`` shows a bar over the calls."""
    process = denoiser.process
    x0 = process.check_data(x0)

    def term(t: Tensor) -> Tensor:
        return step_terms(denoiser, x0, t, process.sample(x0, t, generator), **cond)

    with torch.no_grad():
        decoder = term(torch.ones(x0.shape[0], dtype=torch.long))
    diffusion, se, means = diffusion_terms(
        term, decoder, process.num_steps, num_steps, generator, progress
    )
    prior = process.prior_kl(x0).to(decoder.device)
    return Bound(prior, decoder, diffusion, se, means, x0[0].numel())


@dataclass(frozen=True)
class DiscreteObjective:
    """A discrete training objective and its randomness: ``draw`` makes a batch's steps t
    (uniform in 1..T) and the uniforms u that pick x_t ~ q(x_t | x0); ``__call__`` is a
    deterministic function of them (so data-parallel processes compute what one does)."""

    kind: Loss = Loss.DISCRETE_HYBRID
    ce_weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Loss.parse(self.kind))
        discrete = (Loss.DISCRETE_VLB, Loss.DISCRETE_CE, Loss.DISCRETE_HYBRID)
        if self.kind not in discrete:
            valid = ", ".join(repr(k.value) for k in discrete)
            raise ValueError(
                f"loss {self.kind.value!r} trains continuous models; a discrete process trains "
                f"with {valid}"
            )
        if not (math.isfinite(self.ce_weight) and self.ce_weight >= 0):
            raise ValueError(f"ce_weight must be finite and >= 0, got {self.ce_weight}")

    def check_model(self, model) -> None:
        if not isinstance(model, DiscreteModel):
            raise ValueError(
                f"loss {self.kind.value!r} trains a discrete model, got a {type(model).__name__}"
            )

    def check_data(self, x: Tensor) -> None:
        """Categories only (the process checks their range)."""
        if x.is_floating_point():
            raise ValueError("a discrete model trains on integer categories, got float data")

    def draw(
        self, process: DiscreteProcess, x0: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Per-sample steps t [B] and uniforms u [B, *D] (per-sample along dim 0)."""
        t = torch.randint(1, process.num_steps + 1, (x0.shape[0],), generator=generator)
        u = torch.rand(x0.shape, generator=generator, dtype=torch.float64)
        return {"t": t, "u": u.to(x0.device)}

    def __call__(self, model: DiscreteModel, x0: Tensor, draws: dict[str, Tensor], **cond):
        """The batch-mean loss in bits per dimension (one network evaluation)."""
        process, t = model.process, draws["t"]
        x_t = categorical(process.marginal(x0, t), u=draws["u"])
        logits = model(x_t, t, **cond)
        loss = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
        if self.kind is not Loss.DISCRETE_CE:
            terms = _terms(process, x0, t, x_t, logits)
            loss = loss + process.prior_kl(x0) + process.num_steps * terms
        if self.kind is not Loss.DISCRETE_VLB:
            weight = 1.0 if self.kind is Loss.DISCRETE_CE else self.ce_weight
            loss = loss + weight * _cross_entropy(x0, logits)
        return bits_per_dim(loss, x0).mean().float()


__all__ = ["DiscreteObjective", "cross_entropy", "step_terms", "vlb"]
