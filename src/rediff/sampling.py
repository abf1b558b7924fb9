"""The one-call form: ``rediff.sample(denoiser, shape, sampler=..., steps=...)``.

Names (sampler, spacing) are resolved here through their registries; the number of denoiser
evaluations is counted by wrapping the denoiser, never estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from rediff import grids, samplers
from rediff._tensor import Tensor
from rediff.model import Denoiser
from rediff.samplers._common import Step


class CountingDenoiser(Denoiser):
    """A Denoiser that counts its calls (one call = one network evaluation on a batch)."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self.calls = 0

    def __call__(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> Tensor:
        self.calls += 1
        return self.denoiser(x_t, t, **cond)

    def with_variance(self, x_t: Tensor, t: Tensor | float, **cond: Any) -> tuple[Tensor, Tensor]:
        self.calls += 1
        return self.denoiser.with_variance(x_t, t, **cond)


@dataclass(frozen=True)
class Samples:
    """The samples ``x``, the number of denoiser evaluations ``nfe`` and the grid ``ts``."""

    x: Tensor
    nfe: int
    ts: Tensor


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    *,
    sampler: str = "dpm++2m",
    steps: int = 20,
    spacing: str | None = None,
    final_step: bool = True,
    t_min: float | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    progress: bool = True,
    **options: Any,
) -> Samples:
    """Draw samples of ``shape`` = (n, *D): x_T from the prior, then the named sampler over a
    ``steps``-step grid of the named spacing (default: the sampler's own, see
    ``samplers.REGISTRY``). Extra ``options`` go to the sampler (eta, order, churn, rtol, ...).
    Returns ``Samples(x, nfe, ts)``."""
    entry = samplers.get(sampler)
    spacing = entry.spacing if spacing is None else spacing
    ts = grids.make(denoiser.schedule, steps, spacing, t_min=t_min, final_step=final_step)
    prior = denoiser.schedule.prior_sample
    x = prior(tuple(shape), generator=generator, dtype=dtype, device=device)
    counting = CountingDenoiser(denoiser)
    with tqdm(total=len(ts) - 1, desc=f"{sampler} ({steps} steps)", disable=not progress) as bar:

        def advance(step: Step) -> None:
            bar.update(1)

        x = entry.function(
            counting, x, ts, generator=generator, callback=advance, **{**entry.options, **options}
        )
        bar.update(bar.total - bar.n)  # adaptive solvers report once, at the end
    return Samples(x, counting.calls, ts)
