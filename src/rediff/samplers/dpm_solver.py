"""DPM-Solver (noise prediction, single-step, orders 1-3) and DPM-Solver++ (data prediction,
multistep 2M / 3M, and its SDE variant).

Both integrate the probability-flow ODE exactly in its linear part, in lam = log(alpha /
sigma) with h = lam_q - lam_p (Lu et al. 2022, "DPM-Solver", eq. 3.4; Lu et al. 2022b,
"DPM-Solver++", eq. 8):

    x_q = (alpha_q / alpha_p) x_p - sigma_q int e^{-lam} eps(lam) dlam       (noise form)
    x_q = (sigma_q / sigma_p) x_p + alpha_q int e^{lam - lam_q} D(lam) dlam  (data form)

and approximate eps or D by Taylor expansions. A step into t = 0 (h = inf) returns x0_hat:
the data form's first-order limit.
"""

from __future__ import annotations

import itertools
import math

from rediff._choices import Choice
from rediff._tensor import Combination, Tensor
from rediff.model import Denoiser
from rediff.noise import Randomness
from rediff.parametrization import Target
from rediff.samplers._common import (
    Callback,
    check_order,
    countdown,
    data_step,
    evaluate,
    multistep_order,
    noise_like,
    notify,
    push,
    working,
)
from rediff.transitions import Point, expm1_neg, point_at_lam, points

# ---- DPM-Solver (noise prediction, single-step) ---------------------------------------------


def _eps(denoiser: Denoiser, x: Tensor, p: Point) -> tuple[Tensor, Tensor]:
    return evaluate(denoiser, x, p, Target.EPS)


def _first_order(x: Tensor, eps: Tensor, p: Point, q: Point) -> Tensor:
    """DPM-Solver-1 (= DDIM): x_q = (alpha_q/alpha_p) x_p - sigma_q (e^h - 1) eps_p."""
    return (q.alpha / p.alpha) * x - q.sigma * math.expm1(q.lam - p.lam) * eps


def _dpm_solver_step(
    denoiser: Denoiser, x: Tensor, eps: Tensor, p: Point, q: Point, order: int
) -> Tensor:
    """One single-step DPM-Solver-k step (Lu et al. 2022, algorithms 4 and 5 with
    r1 = 1/2 for k = 2; r1 = 1/3, r2 = 2/3 for k = 3)."""
    h = q.lam - p.lam
    if order == 1:
        return _first_order(x, eps, p, q)
    if order == 2:
        r1 = 0.5
        s1 = point_at_lam(denoiser.schedule, p.lam + r1 * h)
        eps1, _ = _eps(denoiser, _first_order(x, eps, p, s1), s1)
        return _first_order(x, eps, p, q) - (q.sigma / (2 * r1)) * math.expm1(h) * (eps1 - eps)
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0
    s1 = point_at_lam(denoiser.schedule, p.lam + r1 * h)
    s2 = point_at_lam(denoiser.schedule, p.lam + r2 * h)
    eps1, _ = _eps(denoiser, _first_order(x, eps, p, s1), s1)
    phi_r2 = math.expm1(r2 * h) / (r2 * h) - 1.0
    u2 = _first_order(x, eps, p, s2) - (s2.sigma * r2 / r1) * phi_r2 * (eps1 - eps)
    eps2, _ = _eps(denoiser, u2, s2)
    phi = math.expm1(h) / h - 1.0
    return _first_order(x, eps, p, q) - (q.sigma / r2) * phi * (eps2 - eps)


def dpm_solver(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Randomness = None,
    callback: Callback | None = None,
    order: int = 2,
) -> Tensor:
    """Single-step DPM-Solver of order 1, 2 or 3 (Lu et al. 2022): ``order`` evaluations per
    step (one for the step into t = 0). Order 1 is DDIM (eta = 0)."""
    del generator  # deterministic
    check_order(order, (1, 2, 3))
    grid, x_in = points(denoiser.schedule, ts), x
    x = working(x)
    for i, (p, q) in enumerate(itertools.pairwise(grid)):
        eps, x0 = _eps(denoiser, x, p)
        x = x0 if q.is_data else _dpm_solver_step(denoiser, x, eps, p, q, order)
        notify(callback, i, p, q, x, x0)
    return x.to(x_in.dtype)


# ---- DPM-Solver++ (data prediction, multistep) -----------------------------------------------

#: grids of this many steps or more use 3M's exact D2 by default (third order); shorter ones
#: the peers' half of it, which measured better there (docs/design.md)
EXACT_D2_FROM = 20


def _data_derivatives(history: list[tuple[float, Tensor]], h: float, order: int, exact_d2: bool):
    """Divided differences of D in lam, scaled by powers of h: D1 ~ h D'(lam_p) and
    D2 ~ h^2 D''(lam_p), from the last ``order`` outputs (Lu et al. 2022b, algorithm 2).

    With r_k = (previous step widths) / h: D1_0 = (D_0 - D_1) / r0; for order 3 also
    D1_1 = (D_1 - D_2) / r1, D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) and
    D2 = 2 (D1_0 - D1_1) / (r0 + r1). The factor 2 (``exact_d2``) makes D2 the second
    derivative; the DPM-Solver code release and diffusers omit it, which leaves their 3M
    second order (tests/test_samplers.py::test_data_steps_are_exact_for_polynomial_denoisers)
    but damps the extrapolation where steps are few and wide.
    """
    (lam0, d0), (lam1, d1) = history[-1], history[-2]
    r0 = (lam0 - lam1) / h
    d1_0 = (d0 - d1) / r0
    if order == 2:
        return d1_0, None
    lam2, d2 = history[-3]
    r1 = (lam1 - lam2) / h
    d1_1 = (d1 - d2) / r1
    scale = 2.0 if exact_d2 else 1.0
    return d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1), scale * (d1_0 - d1_1) / (r0 + r1)


class SolverType(Choice, noun="solver type"):
    """How a second-order DPM-Solver++ step weighs the divided difference D1 ~ h D'
    (diffusers' and k-diffusion's ``solver_type``):

    - ``midpoint``: the weight of D evaluated at the step's midpoint in lam, 1/2 of the
      first-order weight (Lu et al. 2022b, algorithm 2; the ODE default of the paper, of
      diffusers and k-diffusion, and their SDE default);
    - ``heun``: the exact integral for D linear in lam (the trapezoidal-rule weight).
    """

    MIDPOINT = "midpoint"
    HEUN = "heun"


def _pp_ode_step(
    x: Combination,
    history,
    p: Point,
    q: Point,
    order: int,
    solver_type: SolverType,
    exact_d2: bool,
) -> Combination:
    """x_q = (sigma_q/sigma_p) x - alpha_q phi_1 D_0 [- alpha_q phi_1 D1 / 2 (2M midpoint)]
    [+ alpha_q phi_2 D1 (2M heun, 3M)] [- alpha_q phi_3 D2 (3M)], phi_1 = e^{-h} - 1,
    phi_2 = phi_1/h + 1, phi_3 = phi_2/h - 1/2: the exact integral of e^{lam - lam_q} D for D
    quadratic in lam (linear with 'heun' or without ``exact_d2``)."""
    h = q.lam - p.lam
    phi_1 = -expm1_neg(h)
    x_next = data_step(x, history[-1][1], p, q)
    if order == 1:
        return x_next
    d1, d2 = _data_derivatives(history, h, order, exact_d2)
    if order == 2 and solver_type is SolverType.MIDPOINT:
        return x_next - 0.5 * q.alpha * phi_1 * d1
    phi_2 = phi_1 / h + 1.0
    if order == 2:
        return x_next + q.alpha * phi_2 * d1
    phi_3 = phi_2 / h - 0.5
    return x_next + q.alpha * phi_2 * d1 - q.alpha * phi_3 * d2


def pp_sde_step(
    x: Combination, history, p: Point, q: Point, order: int, solver_type: SolverType, z: Tensor
) -> Combination:
    """SDE-DPM-Solver++ (Lu et al. 2022b, section 5), k = 1 - e^{-2h}, D' = D1 / h:
    x_q = (sigma_q/sigma_p) e^{-h} x + alpha_q k D_0 + w alpha_q D1 + sigma_q sqrt(k) z, with
    w = k / 2 ('midpoint', diffusers' and k-diffusion's default) or w = 1 - k / (2h) (the
    exact integral of the data term for D linear in lam, 'heun'); both are weakly second
    order, differing by O(h^2) D1 a step."""
    h = q.lam - p.lam
    k = expm1_neg(2.0 * h)
    x_next = (q.sigma / p.sigma) * math.exp(-h) * x + q.alpha * k * history[-1][1]
    if order == 2:
        d1, _ = _data_derivatives(history, h, 2, exact_d2=True)
        w = 0.5 * k if solver_type is SolverType.MIDPOINT else 1.0 - k / (2.0 * h)
        x_next = x_next + q.alpha * w * d1
    return x_next + q.sigma * math.sqrt(k) * Combination.of(z)


def dpm_solver_pp(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Randomness = None,
    callback: Callback | None = None,
    order: int = 2,
    sde: bool = False,
    solver_type: SolverType | str = SolverType.MIDPOINT,
    lower_order_final: bool = True,
    count_jump: bool | None = None,
    exact_d2: bool | None = None,
) -> Tensor:
    """Multistep DPM-Solver++ (Lu et al. 2022b): order 1 (= DDIM), 2 (2M) or 3 (3M), one
    evaluation per step, lower orders while the history fills up, for the step into t = 0
    and (``lower_order_final``, on short grids) for the last steps, counting the final jump
    to t = 0 among them or not (``count_jump``; see ``countdown``). ``sde=True`` is
    SDE-DPM-Solver++ (orders 1 and 2), which injects fresh noise. ``solver_type``
    ('midpoint' or 'heun', see ``SolverType``) shapes the second-order steps. 3M's D2
    (``_data_derivatives``) is the exact second difference (``exact_d2=True``: third order)
    or the peers' half of it (False); by default exact from EXACT_D2_FROM steps, the half
    on fewer, where it measured better."""
    check_order(order, (1, 2) if sde else (1, 2, 3))
    solver_type = SolverType.parse(solver_type)
    grid, x_in = points(denoiser.schedule, ts), x
    x, steps = working(x), len(grid) - 1
    exact_d2 = steps >= EXACT_D2_FROM if exact_d2 is None else exact_d2
    counted = countdown(grid, lower_order_final, count_jump, denoiser.schedule.t_min)
    history: list[tuple[float, Combination]] = []
    for i, (p, q) in enumerate(itertools.pairwise(grid)):
        x0 = denoiser.at(x, p)
        history = push(history, (p.lam, Combination.of(x0)), order)
        step_order = multistep_order(order, len(history), i, q, counted)
        if sde and not q.is_data:
            z = noise_like(x, generator, i, p, q)
            x = pp_sde_step(Combination.of(x), history, p, q, step_order, solver_type, z)
        else:
            x = _pp_ode_step(Combination.of(x), history, p, q, step_order, solver_type, exact_d2)
        x = x.value()
        notify(callback, i, p, q, x, x0)
    return x.to(x_in.dtype)
