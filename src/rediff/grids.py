"""Time grids: where a sampler evaluates the denoiser (DESIGN.md: a grid is data).

A grid is a 1-D float64 tensor of times, strictly decreasing from t_max. With
``final_step=True`` (default) it ends with ``0``: the explicit final jump to clean data
(sigma = 0), which every sampler takes by returning its last x0_hat. Then ``steps`` grid
points lie in [t_min, t_max] and the grid has ``steps + 1`` entries; without the final step,
``steps + 1`` points lie in [t_min, t_max] and sampling stops at t_min.

| spacing     | points                                                                 |
|-------------|------------------------------------------------------------------------|
| `uniform`   | uniform in t                                                            |
| `linear`    | uniform in t from t_max down to 0 itself: the last point before the     |
|             | final jump is t_max / steps, not t_min (diffusers' flow-matching grid;  |
|             | needs final_step)                                                       |
| `logsnr`    | uniform in log-SNR (Lu et al. 2022, DPM-Solver, section 3.3)            |
| `karras`    | noise levels (s_max^(1/rho) + u (s_min^(1/rho) - s_max^(1/rho)))^rho,   |
|             | u uniform in [0, 1] (Karras et al. 2022, eq. 5)                        |
| `quadratic` | t = t_min + (t_max - t_min) u^2 (Song et al. 2021, DDIM, appendix D.2)  |
| `leading`   | DDPM integer steps k = 1 + j floor(T / n), j = n-1..0 (diffusers)       |
| `trailing`  | DDPM integer steps k = round(T - j T / n), j = 0..n-1 (Lin et al. 2024) |

``first_interval`` r stretches the first interval to r times each of the others in the
spacing's own coordinate (log-SNR for ``logsnr``), which stay equal: u_0 = 1 and
u_i = (n - 1 - i) / (n - 2 + r) for the n points. The data-prediction solvers' local error
over a step into lambda_s carries the factor sigma_s e^lambda_s = alpha_s (the exact step,
eq. 8 of DPM-Solver++, Lu et al. 2022b), so a step out of near-pure noise costs little and
its length is better spent below (the short-budget default, ``samplers.SHORT_BUDGET``,
uses r = 2).

``shift`` s moves every point to a noisier time with the same spacing of the rest: the
log-SNR lowered by 2 log s, which on flow matching's path is SD3's resolution shift
t' = s t / (1 + (s - 1) t) (Esser et al. 2024, eq. 23; diffusers' ``shift``). It keeps t = 0
and pure noise in place; a point moved out of the schedule's range is refused. Spacings
defined by the noise level at t_max (``logsnr``, ``karras``) need it finite: on a schedule
that reaches pure noise (flow matching with t_max = 1) they start at ``finite_t_max``.
"""

from __future__ import annotations

import math

import torch

from rediff._choices import Choice
from rediff._tensor import Tensor
from rediff.schedules import DiscreteVP, Schedule


class Spacing(Choice):
    """How grid points are spread between t_max and t_min."""

    UNIFORM = "uniform"
    LINEAR = "linear"
    LOGSNR = "logsnr"
    KARRAS = "karras"
    QUADRATIC = "quadratic"
    LEADING = "leading"
    TRAILING = "trailing"


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def _unit_points(n: int, first_interval: float) -> Tensor:
    """n points u from 1 down to 0, the first interval ``first_interval`` times the others
    (n = 1: u = 1 alone)."""
    rest = torch.arange(n - 2, -1, -1, dtype=torch.float64) / (n - 2 + first_interval)
    return torch.cat([torch.ones(1, dtype=torch.float64), rest])


def _continuous(
    schedule: Schedule,
    spacing: Spacing,
    n: int,
    t_min: float,
    t_max: float,
    rho: float,
    first_interval: float,
) -> Tensor:
    """n points from t_max down to t_min (both included) under a continuous spacing."""
    u = _unit_points(n, first_interval)
    if spacing is Spacing.UNIFORM:
        return t_min + (t_max - t_min) * u
    if spacing is Spacing.QUADRATIC:
        return t_min + (t_max - t_min) * u.square()
    if spacing is Spacing.LOGSNR:
        lo, hi = schedule.log_snr(t_max), schedule.log_snr(t_min)
        return schedule.t_from_log_snr(hi + (lo - hi) * u)
    # Karras: interpolate noise_level^(1/rho) linearly
    s_min = float(schedule.noise_level(t_min)) ** (1.0 / rho)
    s_max = float(schedule.noise_level(t_max)) ** (1.0 / rho)
    return schedule.t_from_noise_level((s_min + (s_max - s_min) * u) ** rho)


def _integer(schedule: DiscreteVP, spacing: Spacing, n: int) -> Tensor:
    """n DDPM steps k (as times k / T), largest first."""
    T = schedule.num_steps
    if n > T:
        raise ValueError(
            f"{spacing.value!r} spacing picks distinct DDPM steps: at most T = {T} grid points, "
            f"got {n}; use fewer steps (final_step=False adds a point) or a continuous spacing"
        )
    j = torch.arange(n, dtype=torch.float64)
    leading = 1 + (n - 1 - j) * (T // n)
    return (leading if spacing is Spacing.LEADING else torch.round(T - j * T / n)) / T


def make(
    schedule: Schedule,
    steps: int,
    spacing: Spacing | str = Spacing.LOGSNR,
    *,
    t_min: float | None = None,
    t_max: float | None = None,
    rho: float = 7.0,
    final_step: bool = True,
    shift: float = 1.0,
    first_interval: float = 1.0,
) -> Tensor:
    """A decreasing float64 grid of times for ``steps`` sampler steps.

    Args:
        schedule: the forward process whose times the grid holds.
        steps: number of steps (grid intervals), >= 1.
        spacing: one of ``Spacing`` (see the module table).
        t_min, t_max: the range covered (default: the schedule's own; ``finite_t_max`` for
            the log-SNR and Karras spacings).
        rho: Karras' exponent (7 in EDM).
        final_step: end with t = 0, the jump to clean data (see the module docstring).
        shift: SD3's time shift s > 0 (1: none; see the module docstring).
        first_interval: the first interval's length in units of the others (1: none; the
            continuous spacings only; see the module docstring).
    """
    _check_steps(steps)
    spacing = Spacing.parse(spacing)
    t_min = schedule.t_min if t_min is None else float(t_min)
    if t_max is None:
        finite = spacing in (Spacing.LOGSNR, Spacing.KARRAS)
        t_max = schedule.finite_t_max if finite else schedule.t_max
    t_max = float(t_max)
    schedule.check_t(torch.tensor([t_min, t_max], dtype=torch.float64), allow_zero=False)
    if not t_min < t_max:
        raise ValueError(f"need t_min < t_max, got t_min={t_min}, t_max={t_max}")
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be positive and finite, got {rho}")
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be positive and finite, got {shift}")
    _check_first_interval(spacing, first_interval)
    n = steps if final_step else steps + 1
    if spacing is Spacing.LINEAR:
        if not final_step:
            raise ValueError(
                "'linear' spacing runs down to t = 0 and needs final_step=True; use 'uniform' "
                "to stop at t_min"
            )
        if t_max / n < t_min * (1 - 1e-12):
            raise ValueError(
                f"'linear' spacing's last point t_max / steps = {t_max / n:.6g} lies below "
                f"t_min = {t_min:.6g}; use at most {int(t_max / t_min)} steps or another spacing"
            )
        ts = t_max * (1.0 - torch.arange(n, dtype=torch.float64) / n)
    elif spacing in (Spacing.LEADING, Spacing.TRAILING):
        if not isinstance(schedule, DiscreteVP):
            raise ValueError(
                f"{spacing.value!r} spacing picks DDPM's integer steps and needs a DiscreteVP "
                f"schedule, got {type(schedule).__name__}; use 'uniform', 'logsnr' or 'karras'"
            )
        ts = _integer(schedule, spacing, n)
    else:
        _check_finite_top(schedule, spacing, t_max)
        ts = _continuous(schedule, spacing, n, t_min, t_max, rho, first_interval)
        ts[0] = t_max  # exact endpoints, whatever the spacing's round trip did to them
        if n > 1:
            ts[-1] = t_min
    if shift != 1.0:
        ts = shifted(schedule, ts, shift)
    if final_step:
        ts = torch.cat([ts, ts.new_zeros(1)])
    return check(schedule, ts)


def _check_first_interval(spacing: Spacing, first_interval: float) -> None:
    """A positive, finite ratio, and other than 1 only where the spacing has a coordinate."""
    if not (math.isfinite(first_interval) and first_interval > 0):
        raise ValueError(f"first_interval must be positive and finite, got {first_interval}")
    fixed = (Spacing.LINEAR, Spacing.LEADING, Spacing.TRAILING)
    if first_interval != 1.0 and spacing in fixed:
        raise ValueError(
            f"{spacing.value!r} spacing fixes its points, so first_interval must be 1, got "
            f"{first_interval}; use 'uniform', 'quadratic', 'logsnr' or 'karras'"
        )


def _check_finite_top(schedule: Schedule, spacing: Spacing, t_max: float) -> None:
    """Spacings set by the noise level at t_max need it finite (not pure noise)."""
    if spacing in (Spacing.LOGSNR, Spacing.KARRAS) and float(schedule.alpha(t_max)) == 0.0:
        raise ValueError(
            f"{spacing.value!r} spacing needs a finite noise level at t_max, but t_max = "
            f"{t_max} is pure noise (alpha = 0); pass t_max < 1 (e.g. 0.999) or use 'uniform' "
            "spacing (diffusers' flow-matching grid)"
        )


def shifted(schedule: Schedule, ts: Tensor, shift: float) -> Tensor:
    """The times ``ts`` (none of them 0) with their log-SNR lowered by 2 log(shift): on flow
    matching t' = s t / (1 + (s - 1) t) (SD3's shift, Esser et al. 2024, eq. 23)."""
    out = schedule._t_from_log_snr(schedule.log_snr(ts) - 2.0 * math.log(shift))  # range below
    low, high = float(out.min()), float(out.max())
    if low < schedule.t_min * (1 - 1e-12) or high > schedule.t_max * (1 + 1e-12):
        raise ValueError(
            f"shift {shift} moves the grid to [{low:.6g}, {high:.6g}], outside the schedule's "
            f"[{schedule.t_min:.6g}, {schedule.t_max:.6g}]; narrow the grid with t_min / t_max "
            "or use a schedule that reaches pure noise (flow matching with t_max = 1)"
        )
    return out.clamp(schedule.t_min, schedule.t_max)


def check(schedule: Schedule, ts: Tensor) -> Tensor:
    """Validate a grid: 1-D, at least two times, strictly decreasing, within the schedule's
    range, with t = 0 allowed only as the last entry. Returns it as float64 on the CPU."""
    ts = torch.as_tensor(ts).detach().to("cpu", torch.float64)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(
            f"a time grid must be 1-D with at least 2 times, got shape {tuple(ts.shape)}"
        )
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(
            f"a time grid must be strictly decreasing (from noise to data), got {ts.tolist()}"
        )
    if bool((ts[:-1] == 0).any()):
        raise ValueError("t = 0 (clean data) may only be the last time of a grid")
    schedule.check_t(ts)
    return ts
