"""UniPC: the unified predictor-corrector of Zhao et al. (2023), data-prediction form, B(h) =
e^{-h} - 1 ("bh2"), multistep.

In lam = log(alpha / sigma), with h = lam_q - lam_p and previous outputs D_k at lam_k,
r_k = (lam_k - lam_p) / h and D1_k = (D_k - D_p) / r_k:

    UniP:  x_q = (sigma_q/sigma_p) x_p - alpha_q (e^{-h} - 1) D_p - alpha_q B(h) sum_k a_k D1_k
    UniC:  the same from x_p with D1_q = D(x_q_pred) - D_p added, weights c solving R c = b,

where R_ij = r_j^(i-1) and b_i = i! phi_{i+1}(-h) / B(h) (Zhao et al. 2023, algorithm 2 and
eq. 9). The corrector reuses the evaluation at the predicted point, which the next predictor
needs anyway, so each step costs one evaluation; UniC-p raises the order from p to p + 1.
The step into t = 0 is first order (it returns x0_hat) and is not corrected.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator

import torch

from rediff._tensor import Combination, Tensor
from rediff.model import Denoiser
from rediff.noise import Randomness
from rediff.samplers._common import (
    Callback,
    check_order,
    countdown,
    data_step,
    multistep_order,
    notify,
    push,
    working,
)
from rediff.transitions import Point, points


def _weights(rks: list[float], h: float) -> list[float]:
    """UniP (predictor) or UniC (corrector) weights for the scaled differences.

    rks holds r_k of the previous outputs and, for the corrector, 1.0 for the new point.
    """
    n = len(rks)  # the number of differences used
    if n == 1:  # Zhao et al. (2023), section 3.2: the second-order weight 1/2
        return [0.5]
    hh = -h
    b_h = math.expm1(hh)
    phi = b_h / hh - 1.0
    factorial = 1.0
    rows, b = [], []
    for i in range(1, n + 1):
        rows.append([r ** (i - 1) for r in rks])
        b.append(phi * factorial / b_h)
        factorial *= i + 1
        phi = phi / hh - 1.0 / factorial
    R = torch.tensor(rows, dtype=torch.float64)
    return torch.linalg.solve(R, torch.tensor(b, dtype=torch.float64)).tolist()


def unipc_update(
    x: Tensor,
    history: list[tuple[float, Combination]],
    p: Point,
    q: Point,
    new: Tensor | None,
) -> Tensor:
    """UniP from x at p (history ends with (lam_p, D_p)); with ``new`` = D at the predicted
    point q, UniC instead."""
    h = q.lam - p.lam
    d_p = history[-1][1]
    rks = [(lam - p.lam) / h for lam, _ in history[:-1]]
    diffs = [(d - d_p) / r for r, (_, d) in zip(rks, history[:-1], strict=True)]
    if new is not None:
        rks, diffs = [*rks, 1.0], [*diffs, Combination.of(new) - d_p]
    x_next = data_step(Combination.of(x), d_p, p, q)
    if diffs:
        weights = _weights(rks, h)
        correction = functools.reduce(
            operator.add, (w * d for w, d in zip(weights, diffs, strict=True))
        )
        x_next = x_next - q.alpha * math.expm1(-h) * correction
    return x_next.value()


def unipc(
    denoiser: Denoiser,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Randomness = None,
    callback: Callback | None = None,
    order: int = 2,
    corrector: bool = True,
    lower_order_final: bool = True,
    count_jump: bool | None = None,
) -> Tensor:
    """UniPC multistep sampler of order 2 or 3 (Zhao et al. 2023): UniP-``order`` predictor,
    UniC corrector (disable with ``corrector=False``), one evaluation per step; lower orders
    while the history fills up, into t = 0 and (``lower_order_final``, on short grids) for
    the last steps, counting the final jump to t = 0 among them or not (``count_jump``; see
    ``countdown``); the corrector of a step uses its predictor's history."""
    del generator  # deterministic
    check_order(order, (1, 2, 3))
    grid, x_in = points(denoiser.schedule, ts), x
    x, counted = working(x), countdown(grid, lower_order_final, count_jump, denoiser.schedule.t_min)
    history: list[tuple[float, Combination]] = []
    previous: tuple[Tensor, Point, list[tuple[float, Combination]]] | None = None
    for i, (p, q) in enumerate(itertools.pairwise(grid)):
        d_p = denoiser.at(x, p)
        if corrector and previous is not None:  # UniC on the last step, reusing D(x_p)
            x_prev, p_prev, hist_prev = previous
            x = unipc_update(x_prev, hist_prev, p_prev, p, d_p)
        history = push(history, (p.lam, Combination.of(d_p)), order)
        known = multistep_order(order, len(history), i, q, counted)
        step_history = history[-known:]
        previous = (x, p, step_history)
        x = unipc_update(x, step_history, p, q, None)
        notify(callback, i, p, q, x, d_p)
    return x.to(x_in.dtype)
