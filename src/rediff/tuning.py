"""Time grids tuned to a denoiser at a given budget (issue 18), in the spirit of Sabour et
al. 2024 ("Align Your Steps") and Xue et al. 2024 ("Accelerating Diffusion Sampling with
Optimized Time Steps"): instead of a fixed spacing, place a deterministic sampler's
``steps`` points where they lower its error on this model.

The error of a grid is measured on a small fitting batch: E ||x_grid - x_ref||^2 / d, the
squared distance between the sampler's result from x_T and the probability-flow ODE's own
solution from the same x_T (``samplers.ode``, adaptive, tight tolerance): the
discretisation error itself, with no noise to average away. The points move one at a time
in half-log-SNR lam, each tried a fraction of the way towards either neighbour and kept
when the error falls (a pattern search; the fraction halves every round), so the result is
never worse than the starting spacing on the fitting batch. The first point stays at
t_max; the last in-range point moves too when the grid ends with the jump to t = 0 (the
final step), else it stays at t_min.

This lives above ``samplers`` (``grids`` sits below them in the module graph), so the
tuned grid is ``tuning.optimize``; ``rediff.sample(..., ts=grid)`` samples on it.
"""

from __future__ import annotations

import torch

from rediff import grids, samplers
from rediff._tensor import Tensor
from rediff.model import Denoiser
from rediff.samplers._common import check_positive
from rediff.transitions import points


def _sampler(name: str) -> samplers.Entry:
    """A deterministic registry entry (its grid error is well defined), else a ValueError."""
    entry = samplers.get(name)
    if entry.stochastic or entry.adaptive:
        raise ValueError(
            f"tuning.optimize fits a deterministic fixed-step sampler's grid; {name!r} is "
            f"{'adaptive' if entry.adaptive else 'stochastic'}: pick one of "
            + ", ".join(n for n, e in samplers.REGISTRY.items() if not (e.stochastic or e.adaptive))
        )
    return entry


def _move(schedule, times: list[float], lams: list[float], i: int, lam: float):
    """The grid with point i moved to half-log-SNR ``lam`` (the other points untouched)."""
    t = float(schedule.t_from_log_snr(2.0 * lam))
    return [*times[:i], t, *times[i + 1 :]], [*lams[:i], lam, *lams[i + 1 :]]


def optimize(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    steps: int,
    *,
    sampler: str = "dpm++2m",
    spacing: grids.Spacing | str | None = None,
    final_step: bool = True,
    rounds: int = 6,
    rtol: float = 1e-6,
    generator: torch.Generator | None = None,
    **options,
) -> Tensor:
    """A ``steps``-step grid for ``sampler`` tuned to ``denoiser`` on a fitting batch of
    ``shape`` = (n, *D) drawn from the prior (a few hundred points are enough).

    Args:
        spacing: the starting grid's spacing (default: the sampler's own, as in
            ``rediff.sample``); the result is at least as good as it on the fitting batch.
        final_step: end with the jump to t = 0 (``grids.make``).
        rounds: pattern-search rounds; each tries every free point in both directions, so
            the fit costs at most 2 rounds steps^2 evaluations on the batch, plus the
            reference solve.
        rtol: the reference ODE solve's tolerance (rtol = atol).
        options: passed to the sampler (e.g. ``order``).

    Returns:
        the grid, a decreasing float64 tensor for ``samplers.*`` or ``rediff.sample(ts=)``.
    """
    entry = _sampler(sampler)
    check_positive("rtol", rtol)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    schedule = denoiser.schedule
    start = grids.make(
        schedule, steps, entry.spacing if spacing is None else spacing, final_step=final_step
    )
    x_T = schedule.prior_sample(tuple(shape), generator=generator, dtype=torch.float64)
    with torch.no_grad():
        reference = samplers.ode(denoiser, x_T, start, rtol=rtol, atol=rtol)
    tail = [0.0] if final_step else []

    def error(times: list[float]) -> float:
        ts = grids.check(schedule, torch.tensor(times + tail, dtype=torch.float64))
        with torch.no_grad():
            x = entry.function(denoiser, x_T, ts, **{**entry.options, **options})
        return float((x - reference).square().mean())

    grid = points(schedule, start, from_pure_noise=True)[: len(start) - len(tail)]
    times, lams = [p.t for p in grid], [p.lam for p in grid]
    floor = float(0.5 * schedule.log_snr(schedule.finite_t_max))  # pure noise has lam = -inf
    ceiling = float(0.5 * schedule.log_snr(schedule.t_min))
    free = range(1, len(times) if final_step else len(times) - 1)
    best, fraction = error(times), 0.5
    for _ in range(rounds):
        for i in free:
            neighbours = (max(lams[i - 1], floor), lams[i + 1] if i + 1 < len(lams) else ceiling)
            for target in neighbours:
                trial = _move(schedule, times, lams, i, lams[i] + fraction * (target - lams[i]))
                value = error(trial[0])
                if value < best:
                    best, (times, lams) = value, trial
                    break
        fraction /= 2.0
    return grids.check(schedule, torch.tensor(times + tail, dtype=torch.float64))
