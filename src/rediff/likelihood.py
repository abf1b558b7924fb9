"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, section 4.3 and
appendix D.2; Chen et al. 2018 and Grathwohl et al. 2019 for the change of variables).

The ODE is solved in y = x / alpha against u = log(noise level s), where it reads
dy/du = y - x0_hat(alpha y, t(u)) (the form ``samplers.ode`` uses); along it

    d log p_u(y(u)) / du = -div_y (y - x0_hat(alpha y)) = -(d - alpha tr(d x0_hat / d x)),

so, integrating from the data time t_min (u_0) to t_max (u_1) and changing variables x = alpha y
at both ends,

    log p(x) = log prior(alpha_1 y_1) + d log alpha_1 - d log alpha_0 + int_{u_0}^{u_1} div_y du.

The data x is taken as x at t_min (the schedule's first time; t_min > 0 is one source of
error, the prior's mismatch with q(x_{t_max}) the other). The divergence is exact (autograd,
one backward pass per dimension) or Hutchinson's estimate with probes drawn once per solve.
Each right-hand side evaluation builds its graph, takes the divergence and drops the graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from rediff import divergence
from rediff._choices import parse_choice
from rediff._tensor import Tensor, check_finite
from rediff.model import Denoiser
from rediff.samplers._common import check_positive

_LN2 = math.log(2.0)


class Trace(str, Enum):
    """How the divergence is computed: ``exact`` or ``hutchinson``."""

    EXACT = "exact"
    HUTCHINSON = "hutchinson"

    @classmethod
    def parse(cls, value: Trace | str) -> Trace:
        return parse_choice(cls, value, "divergence")


@dataclass(frozen=True)
class Likelihood:
    """Per-sample results (float64 [B]): ``nll`` in nats, ``prior`` log prior(latent) in nats,
    ``latent`` the ODE encoding x_{t_max} [B, *D]; ``nfe`` counts right-hand-side
    evaluations; ``dims`` is d."""

    nll: Tensor
    prior: Tensor
    latent: Tensor
    nfe: int
    dims: int

    @property
    def bits_per_dim(self) -> Tensor:
        return self.nll / (self.dims * _LN2)


def log_likelihood(
    denoiser: Denoiser,
    x: Tensor,
    *,
    trace: Trace | str = Trace.EXACT,
    probes: int = 1,
    probe: divergence.Probe | str = divergence.Probe.RADEMACHER,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    **cond,
) -> Likelihood:
    """Negative log-likelihood of x [B, *D] under the denoiser's probability-flow ODE.

    Args:
        trace: ``exact`` (small d) or ``hutchinson`` with ``probes`` probes of kind ``probe``
            (drawn from ``generator`` once, kept along the path: an unbiased estimate).
        rtol, atol, method: torchdiffeq's adaptive solver (default dopri5); ``steps`` instead
            runs ``method`` (e.g. 'rk4', 'euler') with that many fixed steps in log s.
        cond: conditioning passed to the denoiser.
    """
    from torchdiffeq import odeint  # heavy import, done lazily

    check_finite("x", x)
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    trace = Trace.parse(trace)
    schedule = denoiser.schedule
    t0, t1 = schedule.t_min, schedule.t_max
    s0, s1 = float(schedule.noise_level(t0)), float(schedule.noise_level(t1))
    a0, a1 = float(schedule.alpha(t0)), float(schedule.alpha(t1))
    u0, u1 = math.log(s0), math.log(s1)
    x64 = x.to(torch.float64)
    d, batch = x[0].numel(), x.shape[0]
    v = None
    if trace is Trace.HUTCHINSON:
        v = divergence.draw_probes(x64, probes, probe, generator)
    nfe = 0

    def rhs(u: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        s = math.exp(min(max(float(u), u0), u1))  # solvers may probe past the ends
        t = float(schedule.t_from_noise_level(s))
        alpha = float(schedule.alpha(t))
        with torch.enable_grad():
            y = state[0].detach().requires_grad_(True)
            x0_hat = denoiser(alpha * y, t, **cond).to(torch.float64)
            velocity = y - x0_hat
            div = (
                divergence.exact(velocity, y)
                if v is None
                else divergence.hutchinson(velocity, y, v)
            )
        return velocity.detach(), div.detach()

    span = torch.tensor([u0, u1], dtype=torch.float64, device=x.device)
    solver = (
        {"rtol": rtol, "atol": atol, "method": method}
        if steps is None
        else {"method": method, "options": {"step_size": float(span[1] - span[0]) / steps}}
    )
    start = (x64 / a0, torch.zeros(batch, dtype=torch.float64, device=x.device))
    y, integral = odeint(rhs, start, span, **solver)
    latent = a1 * y[-1]
    prior = schedule.prior_log_prob(latent)
    log_p = prior + d * math.log(a1) - d * math.log(a0) + integral[-1]
    if not bool(torch.isfinite(log_p).all()):
        raise FloatingPointError(
            "the likelihood ODE returned a non-finite value; tighten rtol/atol or check the "
            "model and the data range"
        )
    return Likelihood(-log_p, prior, latent, nfe, d)
