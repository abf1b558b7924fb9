"""The one-call form: ``rediff.sample(denoiser, shape, sampler=..., steps=...)``.

Names (sampler, spacing) are resolved here through their registries; the number of denoiser
evaluations is counted by wrapping the denoiser, never estimated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from rediff import grids, samplers
from rediff._tensor import Tensor
from rediff.model import Denoiser
from rediff.noise import Randomness, SharedNoise, offset
from rediff.samplers._common import noise_like
from rediff.transitions import Point, point_at, transition_variance


class CountingDenoiser(Denoiser):
    """A Denoiser that counts its calls (one call = one network evaluation on a batch)."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self.calls = 0

    def __call__(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        self.calls += 1
        return self.denoiser(x_t, t, **cond)

    def at(self, x_t: Tensor, point: Point, **cond: Any) -> Tensor:
        self.calls += 1
        return self.denoiser.at(x_t, point, **cond)

    def with_variance(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        self.calls += 1
        return self.denoiser.with_variance(x_t, t, **cond)


@dataclass(frozen=True)
class Samples:
    """The samples ``x``, the number of denoiser evaluations ``nfe``, the grid ``ts`` and the
    name of the sampler that drew them."""

    x: Tensor
    nfe: int
    ts: Tensor
    sampler: str


@dataclass(frozen=True)
class Resampling:
    """RePaint's schedule (Lugmayr et al. 2022, algorithm 1 and section 4.2): the grid is cut
    into segments of ``jump`` steps; each segment is sampled ``times`` times, and after every
    pass but the last its result is pushed back to the segment's start by the forward
    transition q(x_s | x_t), so that the constrained and the generated parts harmonise."""

    times: int = 1
    jump: int = 1

    def __post_init__(self) -> None:
        for name in ("times", "jump"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Resampling.{name} must be an int >= 1, got {value!r}")


def renoise(
    denoiser: Denoiser, x: Tensor, t: float, s: float, generator: Randomness, step: int = 0
) -> Tensor:
    """Draw x_s ~ q(x_s | x_t) for s > t: (alpha_s / alpha_t) x_t + sqrt(sigma_s^2 -
    (alpha_s / alpha_t)^2 sigma_t^2) z (the forward transition; t = 0 allowed), with the
    noise of grid step ``step`` (between s and t)."""
    p, q = point_at(denoiser.schedule, s), point_at(denoiser.schedule, t)
    std = math.sqrt(transition_variance(p, q))
    return (p.alpha / q.alpha) * x + std * noise_like(x, generator, step, p, q)


def _integrate(entry, denoiser, x, ts, generator, callback, options, resampling) -> Tensor:
    """The sampler over ``ts``, in RePaint segments when ``resampling`` asks for them."""
    if resampling is None or resampling.times == 1:
        return entry.function(denoiser, x, ts, generator=generator, callback=callback, **options)
    for start in range(0, len(ts) - 1, resampling.jump):
        segment = ts[start : start + resampling.jump + 1]
        source = offset(generator, start)  # the segment's steps keep their grid numbers
        for k in range(resampling.times):
            if k:  # back to the segment's start
                x = renoise(denoiser, x, float(segment[-1]), float(segment[0]), source)
            x = entry.function(denoiser, x, segment, generator=source, callback=callback, **options)
    return x


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    *,
    sampler: str | None = None,
    steps: int = 20,
    spacing: str | None = None,
    final_step: bool | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    shift: float = 1.0,
    first_interval: float | None = None,
    ts: Tensor | None = None,
    generator: Randomness = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    progress: bool = True,
    shared: SharedNoise | None = None,
    resampling: Resampling | None = None,
    **options: Any,
) -> Samples:
    """Draw samples of ``shape`` = (n, *D): x_T from the prior, then the named sampler over a
    ``steps``-step grid of the named spacing (default: the sampler's own, see
    ``samplers.REGISTRY``) over [t_min, t_max], moved by SD3's ``shift`` (``grids.make``;
    ``final_step`` default True, ``first_interval`` 1), or the explicit grid ``ts`` (e.g.
    from ``tuning.optimize``; then steps, spacing, final_step, t_min, t_max, shift and
    first_interval are not used). Without a sampler name, the budget's default
    ``samplers.default(steps)`` picks the sampler, and the spacing, final step and (with its
    spacing) first interval not given. Extra ``options`` go to the sampler (eta, order,
    churn, rtol, ...).
    ``shared`` makes groups of samples share their noise (``SharedNoise``); ``resampling``
    repeats segments of the grid (``Resampling``, for inpainting). Returns
    ``Samples(x, nfe, ts, sampler)``."""
    if sampler is None:
        chosen = samplers.default(steps if ts is None else len(ts) - 1)
        sampler = chosen.sampler
        if spacing is None:
            spacing = chosen.spacing
            first_interval = chosen.first_interval if first_interval is None else first_interval
        final_step = chosen.final_step if final_step is None else final_step
    entry = samplers.get(sampler)
    spacing = entry.spacing if spacing is None else spacing
    final_step = True if final_step is None else final_step
    first_interval = 1.0 if first_interval is None else first_interval
    if ts is None:
        ts = grids.make(
            denoiser.schedule,
            steps,
            spacing,
            t_min=t_min,
            t_max=t_max,
            final_step=final_step,
            shift=shift,
            first_interval=first_interval,
        )
    else:
        ts = grids.check(denoiser.schedule, ts)
        steps = len(ts) - 1
    source = generator if shared is None else shared.source(generator, shape[0])
    x = denoiser.schedule.prior_sample(tuple(shape), generator=source, dtype=dtype, device=device)
    counting = CountingDenoiser(denoiser)
    passes = 1 if resampling is None else resampling.times
    total = (len(ts) - 1) * passes
    with tqdm(total=total, desc=f"{sampler} ({steps} steps)", disable=not progress) as bar:
        options = {**entry.options, **options}
        x = _integrate(entry, counting, x, ts, source, lambda _: bar.update(1), options, resampling)
        bar.update(bar.total - bar.n)  # adaptive solvers report once, at the end
    return Samples(x, counting.calls, ts, sampler)
