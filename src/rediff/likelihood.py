"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, section 4.3 and
appendix D.2; Chen et al. 2018 and Grathwohl et al. 2019 for the change of variables).

The ODE is solved in y = x / alpha against u = log(noise level s), where it reads
dy/du = y - x0_hat(alpha y, t(u)) (the form ``samplers.ode`` uses); along it

    d log p_u(y(u)) / du = -div_y (y - x0_hat(alpha y)) = -(d - alpha tr(d x0_hat / d x)),

so, integrating from the data time t_min (u_0) to t_max (u_1; the schedule's
``finite_t_max``) and changing variables x = alpha y at both ends,

    log p(x) = log prior(alpha_1 y_1) + d log alpha_1 - d log alpha_0 + int_{u_0}^{u_1} div_y du.

The data x is taken as x at t_min (the schedule's first time; t_min > 0 is one source of
error, the prior's mismatch with q(x_{t_max}) the other). The divergence is exact (autograd,
one backward pass per dimension) or Hutchinson's estimate with probes drawn once per solve.
Each right-hand side evaluation builds its graph, takes the divergence and drops the graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from rediff import divergence, variational
from rediff._choices import Choice
from rediff._tensor import Combination, Tensor, check_finite
from rediff.model import Denoiser
from rediff.samplers._common import check_positive, push
from rediff.samplers.ode import flow_velocity
from rediff.samplers.unipc import unipc_update
from rediff.transitions import Point

_LN2 = math.log(2.0)


class Trace(Choice, noun="divergence"):
    """How the divergence is computed: ``exact`` or ``hutchinson``."""

    EXACT = "exact"
    HUTCHINSON = "hutchinson"


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


@dataclass(frozen=True)
class Solver:
    """torchdiffeq's adaptive ``method`` with rtol/atol, or, with ``steps``, that many fixed
    steps of ``method`` (e.g. 'rk4', 'euler') in log s."""

    rtol: float = 1e-5
    atol: float = 1e-5
    method: str = "dopri5"
    steps: int | None = None

    def __post_init__(self) -> None:
        check_positive("rtol", self.rtol)
        check_positive("atol", self.atol)
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps}")

    def solve(self, rhs, start, u_from: float, u_to: float):
        """The state at u_to of d state/du = rhs(u, state) from ``start`` at u_from."""
        from torchdiffeq import odeint  # heavy import, done lazily

        device = start[0].device
        span = torch.tensor([u_from, u_to], dtype=torch.float64, device=device)
        options = (
            {"rtol": self.rtol, "atol": self.atol, "method": self.method}
            if self.steps is None
            else {"method": self.method, "options": {"step_size": (u_to - u_from) / self.steps}}
        )
        return tuple(part[-1] for part in odeint(rhs, start, span, **options))


@dataclass(frozen=True)
class Multistep:
    """A fixed budget of ``steps + 1`` right-hand-side evaluations, one per node, for the
    flow and its log-density together (issue 18).

    The state y follows dy/du = y - D(u) (D = x0_hat), whose linear part is integrated
    exactly: with u = log s = -lam this is the data-prediction exponential integrator in
    EDM's coordinates (alpha = 1, sigma = e^u), stepped by UniPC's predictor of ``order``
    (Zhao et al. 2023, UniP-p with B(h) = e^{-h} - 1, ``samplers.unipc``) from the outputs
    D at the previous nodes, so each node costs one evaluation. Every other state
    component (the log-density) has a right-hand side that does not depend on it: its
    integral is the composite quadrature of the values at the nodes, each interval
    integrating the cubic through its four nearest nodes (fourth order; the integrand,
    sigma tr(d eps_hat / d x), is a smooth sigmoid-like function of u).

    The nodes are uniform in asinh((lam - centre) / width): dense around lam = ``centre``
    (noise level e^{-centre} = 0.37 by default, where data of unit scale is resolved) and
    geometrically sparser towards both ends, where the flow is nearly linear. Measured
    (benchmarks/results/likelihood.md): 40 evaluations reach 0.01 nats/dim on the benchmark
    mixtures, where adaptive dopri5 needs about 100.
    """

    steps: int = 39
    order: int = 3
    centre: float = 1.0
    width: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if self.order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {self.order!r}")
        check_positive("width", self.width)
        if not math.isfinite(self.centre):
            raise ValueError(f"centre must be finite, got {self.centre!r}")

    def nodes(self, u_from: float, u_to: float) -> list[float]:
        """The ``steps + 1`` nodes in u from u_from to u_to, both ends exact."""
        a = math.asinh((-u_from - self.centre) / self.width)
        b = math.asinh((-u_to - self.centre) / self.width)
        inner = [
            -(self.centre + self.width * math.sinh(a + (b - a) * k / self.steps))
            for k in range(1, self.steps)
        ]
        return [u_from, *inner, u_to]

    def solve(self, rhs, start, u_from: float, u_to: float):
        """The state at u_to: start[0] by the exponential multistep, the rest by quadrature."""
        us = self.nodes(u_from, u_to)
        y, history, values = start[0], [], []
        for k, u in enumerate(us):
            velocity, *rest = rhs(torch.tensor(u, dtype=torch.float64), (y, *start[1:]))
            values.append(rest)
            if k == len(us) - 1:
                break
            p, q = _edm_point(u), _edm_point(us[k + 1])
            history = push(history, (p.lam, Combination.of(y - velocity)), self.order)
            y = unipc_update(y, history, p, q, None)
        weights = quadrature_weights(us)
        integrals = [
            part + sum(w * value[j] for w, value in zip(weights, values, strict=True))
            for j, part in enumerate(start[1:])
        ]
        return (y, *integrals)


def _edm_point(u: float) -> Point:
    """The point of noise level e^u in EDM's coordinates (alpha = 1, sigma = e^u)."""
    return Point(u, 1.0, math.exp(u), -u)


def quadrature_weights(nodes: list[float]) -> list[float]:
    """w with sum_k w_k f(nodes[k]) = int f from nodes[0] to nodes[-1] (nodes monotone, any
    spacing): each interval integrates the Lagrange cubic through its four nearest nodes
    (fewer when there are fewer), exact for cubics."""
    n, weights = len(nodes), [0.0] * len(nodes)
    m = min(4, n)
    for k in range(n - 1):
        first = max(0, min(k - 1, n - m))
        stencil = list(range(first, first + m))
        for i in stencil:
            basis = np.polynomial.Polynomial([1.0])
            for j in stencil:
                if j != i:
                    basis = (
                        basis * np.polynomial.Polynomial([-nodes[j], 1.0]) / (nodes[i] - nodes[j])
                    )
            antiderivative = basis.integ()
            weights[i] += float(antiderivative(nodes[k + 1]) - antiderivative(nodes[k]))
    return weights


class _Flow:
    """The probability-flow ODE of a denoiser in (y = x / alpha, u = log s), with the time
    range's coordinates and a count of right-hand-side evaluations. The state is float64;
    the denoiser sees the caller's dtype (a float32 network stays float32)."""

    def __init__(self, denoiser: Denoiser, cond: dict, dtype: torch.dtype) -> None:
        self.denoiser, self.cond, self.nfe, self.dtype = denoiser, cond, 0, dtype
        schedule = denoiser.schedule
        t0, t1 = schedule.t_min, schedule.finite_t_max
        self.u0 = math.log(float(schedule.noise_level(t0)))
        self.u1 = math.log(float(schedule.noise_level(t1)))
        self.a0, self.a1 = float(schedule.alpha(t0)), float(schedule.alpha(t1))

    def velocity(self, u: Tensor, y: Tensor) -> Tensor:
        """dy/du = y - x0_hat(alpha y, t(u)) (``samplers.ode.flow_velocity``), counted."""
        self.nfe += 1
        return flow_velocity(self.denoiser, u, y, (self.u0, self.u1), self.dtype, **self.cond)


def _transport(
    denoiser: Denoiser, x: Tensor, to_latent: bool, solver: Solver | Multistep, cond
) -> Tensor:
    check_finite("x" if to_latent else "latent", x)
    flow = _Flow(denoiser, cond, x.dtype)
    a_from, a_to = (flow.a0, flow.a1) if to_latent else (flow.a1, flow.a0)
    u_from, u_to = (flow.u0, flow.u1) if to_latent else (flow.u1, flow.u0)
    start = (x.to(torch.float64) / a_from,)
    (y,) = solver.solve(lambda u, state: (flow.velocity(u, state[0]),), start, u_from, u_to)
    return (a_to * y).to(x.dtype)


def encode(denoiser: Denoiser, x: Tensor, solver: Solver | Multistep = Solver(), **cond) -> Tensor:
    """The ODE encoding of data x (taken at t_min) into the latent x_{t_max}, deterministic."""
    return _transport(denoiser, x, True, solver, cond)


def decode(
    denoiser: Denoiser, latent: Tensor, solver: Solver | Multistep = Solver(), **cond
) -> Tensor:
    """The ODE decoding of a latent x_{t_max} into data (at t_min): the inverse of ``encode``."""
    return _transport(denoiser, latent, False, solver, cond)


def log_likelihood(
    denoiser: Denoiser,
    x: Tensor,
    *,
    trace: Trace | str = Trace.EXACT,
    probes: int = 1,
    probe: divergence.Probe | str = divergence.Probe.RADEMACHER,
    solver: Solver | Multistep = Multistep(),
    generator: torch.Generator | None = None,
    **cond,
) -> Likelihood:
    """Negative log-likelihood of x [B, *D] under the denoiser's probability-flow ODE.

    Args:
        trace: ``exact`` (small d) or ``hutchinson`` with ``probes`` probes of kind ``probe``
            (drawn from ``generator`` once, kept along the path: an unbiased estimate).
        solver: ``Multistep()`` (the default: 40 evaluations) or ``Solver`` (adaptive
            torchdiffeq, e.g. ``Solver(1e-5, 1e-5)`` for a reference value).
        cond: conditioning passed to the denoiser.
    """
    check_finite("x", x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"log_likelihood needs a batch x [B, *D] with B >= 1, got {list(x.shape)}")
    trace = Trace.parse(trace)
    flow = _Flow(denoiser, cond, x.dtype)
    x64 = x.to(torch.float64)
    v = None if trace is Trace.EXACT else divergence.draw_probes(x64, probes, probe, generator)

    def rhs(u: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            y = state[0].detach().requires_grad_(True)
            velocity = flow.velocity(u, y)
            div = (
                divergence.exact(velocity, y)
                if v is None
                else divergence.hutchinson(velocity, y, v)
            )
        return velocity.detach(), div.detach()

    start = (x64 / flow.a0, torch.zeros(x.shape[0], dtype=torch.float64, device=x.device))
    y, integral = solver.solve(rhs, start, flow.u0, flow.u1)
    latent = flow.a1 * y
    prior = denoiser.schedule.prior_log_prob(latent)
    d = x[0].numel()
    log_p = prior + d * math.log(flow.a1) - d * math.log(flow.a0) + integral
    if not bool(torch.isfinite(log_p).all()):
        raise FloatingPointError(
            "the likelihood ODE returned a non-finite value; tighten rtol/atol or check the "
            "model and the data range"
        )
    return Likelihood(-log_p, prior, latent, flow.nfe, d)


def dequantized_nll(
    denoiser: Denoiser,
    x: Tensor,
    levels: int,
    *,
    generator: torch.Generator | None = None,
    **options,
) -> Likelihood:
    """An upper bound on the discrete data's negative log-likelihood, in nats and bits/dim
    comparable with the papers: data on ``levels`` grey levels in [-1, 1] (bin width
    w = 2 / (levels - 1)) are dequantised uniformly, x + w (u - 1/2), and

        -log P(x) <= E_u[-log p(x + w (u - 1/2))] - d log w

    (Theis et al. 2016; Ho et al. 2019), i.e. the density of the pixel values p = (x + 1)/w
    in units where a level has width 1. ``options`` go to ``log_likelihood``."""
    if levels < 2:
        raise ValueError(f"levels must be at least 2, got {levels}")
    variational.check_data(x)  # grey levels live in [-1, 1]
    width = 2.0 / (levels - 1)
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device)
    dequantized = (x.to(torch.float64) + width * (u - 0.5)).to(x.dtype)
    result = log_likelihood(denoiser, dequantized, generator=generator, **options)
    d = x[0].numel()
    return Likelihood(result.nll - d * math.log(width), result.prior, result.latent, result.nfe, d)
