"""What every sampler shares: the grid's coordinates, the working dtype, noise, callbacks.

Per-step coefficients are Python floats computed in float64 from log-space quantities (the
grid lives on the CPU); x is updated in the caller's dtype, promoted to at least float32
inside the loop (DESIGN.md, style rule 8).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rediff import noise
from rediff._tensor import Combination, Tensor, check_finite
from rediff.model import Denoiser
from rediff.parametrization import Target, convert
from rediff.transitions import Point, expm1_neg


@dataclass(frozen=True)
class Step:
    """What a callback receives after each step: the step's index, its two endpoints, the new
    x and the last x0_hat the step computed."""

    index: int
    t: float
    t_next: float
    x: Tensor
    x0_hat: Tensor


Callback = Callable[[Step], None]


def working(x: Tensor) -> Tensor:
    """The starting point x, checked to be finite (every sampler starts here), promoted to at
    least float32 for the loop (bfloat16 and float16 inputs)."""
    check_finite("x (the sampler's starting point)", x)
    return x.to(torch.promote_types(x.dtype, torch.float32))


def noise_like(x: Tensor, generator: noise.Randomness, i: int, p: Point, q: Point) -> Tensor:
    """N(0, I) shaped like x for step i of the grid, from p to q: fresh from ``generator``
    (never the global RNG state when a generator is given), or asked of a NoiseSource for
    that step (``rediff.noise``)."""
    return noise.draw(generator, x.shape, x.dtype, x.device, step=i, t=p.t, t_next=q.t)


def data_step(x: Combination, x0_hat: Combination, p: Point, q: Point) -> Combination:
    """The first-order exponential-integrator step in data prediction, from p to q (Lu et al.
    2022b, DPM-Solver++ eq. 8 with D constant; = DDIM with eta = 0; UniPC's base):
    x_q = (sigma_q / sigma_p) x_p + alpha_q (1 - e^{-h}) x0_hat, h = lam_q - lam_p (lazy:
    the samplers add their higher-order terms before evaluating)."""
    return (q.sigma / p.sigma) * x + q.alpha * expm1_neg(q.lam - p.lam) * x0_hat


def evaluate(denoiser: Denoiser, x: Tensor, p: Point, target: Target) -> tuple[Tensor, Tensor]:
    """One denoiser evaluation at point p, as ``target`` (converted by the one conversion
    module) and as x0_hat."""
    x0 = denoiser.at(x, p)
    return convert(x0, x, p.alpha, p.sigma, Target.X0, target), x0


def push(history: list, item, keep: int) -> list:
    """The last ``keep`` entries of history + [item] (multistep solvers' memory)."""
    return [*history[len(history) - keep + 1 :], item] if keep > 1 else [item]


#: grids of fewer steps than this are short: there multistep solvers with
#: ``lower_order_final`` lower the order of their last steps (diffusers' threshold; the
#: official DPM-Solver's is 10; measured: docs/design.md)
SHORT_GRID = 15


def reads_out(grid: list[Point], t_min: float) -> bool:
    """Whether the grid's final jump to t = 0 leaves from the schedule's t_min (within
    rounding): the official DPM-Solver's layout, where N - 1 steps stop at t_min and
    ``denoise_to_zero`` reads x0_hat off there. A jump from above t_min (DDPM's trailing
    grids: t = T/N) is the widest step of the grid instead, as diffusers counts it."""
    return grid[-1].is_data and grid[-2].t <= t_min * (1.0 + 1e-9)


def countdown(
    grid: list[Point], lower_order_final: bool, count_jump: bool | None, t_min: float
) -> int | None:
    """The number of steps that ``lower_order_final`` counts down over (step i then has order
    at most countdown - i), or None where it is off or the grid is not short (SHORT_GRID
    steps or more). ``count_jump``: a grid that ends with the jump to t = 0 counts it among
    its steps (True: diffusers; the step before the jump may be second order) or not (False:
    the official DPM-Solver of Lu et al. 2022b, whose final denoising lies outside its
    steps, so the step before the jump is first order). None picks by the grid's layout
    (``reads_out``): outside for a jump from t_min, inside for one from above it (measured:
    docs/design.md)."""
    steps = len(grid) - 1
    if not lower_order_final or steps >= SHORT_GRID:
        return None
    if count_jump is None:
        count_jump = not reads_out(grid, t_min)
    return steps - 1 if grid[-1].is_data and not count_jump else steps


def multistep_order(order: int, known: int, i: int, q: Point, counted: int | None) -> int:
    """The order of step i (ending at q) of a multistep solver of order ``order`` that knows
    ``known`` outputs of D: at most ``known``; 1 into t = 0 (x0_hat is the answer); and at
    most counted - i where ``counted`` (``countdown``'s answer) is not None, so the last
    counted step is first order and the one before at most second (Lu et al. 2022b's code
    release and diffusers: on few, wide steps near the data, extrapolating D from outputs
    far back in lam costs more than the order gains)."""
    if q.is_data:
        return 1
    return min(order, known, order if counted is None else counted - i)


def check_order(order: int, allowed: tuple[int, ...]) -> None:
    if order not in allowed:
        raise ValueError(f"order must be one of {allowed}, got {order!r}")


def notify(callback: Callback | None, i: int, p: Point, q: Point, x: Tensor, x0: Tensor) -> None:
    if callback is not None:
        callback(Step(i, p.t, q.t, x, x0))


def check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    """A finite, positive (or, with ``allow_zero``, non-negative) option, else a ValueError."""
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return float(value)
