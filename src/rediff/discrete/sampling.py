"""Sampling discrete diffusion models: ancestral steps over all T steps or fewer.

From x_T ~ prior, each step from t to an earlier s draws x_s ~ p(x_s | x_t), the
x0-parameterised reverse step between the two times (``rediff.discrete.reverse``; Q_{s->t}
is the product of the skipped one-step matrices, so fewer steps are exact where a single
step's posterior is: for one coordinate, one step from T with the exact posterior is exact).
The last step, to s = 0, returns the data values: a draw from p(x0 | x_t) (``final =
"sample"``) or its most probable value (``"argmax"``).

``cached`` (absorbing kind only) evaluates the denoiser again only when some coordinate
changed since its last evaluation: the absorbing process's exact posterior p(x0 | x_t)
depends on t only through which tokens are masked, so reusing it is exact for such
denoisers (MDLM's caching; for a time-conditioned network it reuses the output of the last
evaluated step). Both take ``generator=``, show a progress bar and count evaluations.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from rediff._choices import Choice
from rediff._tensor import Tensor
from rediff.discrete.denoiser import DiscreteDenoiser
from rediff.discrete.process import DiscreteProcess, Kind, categorical
from rediff.discrete.reverse import reverse_probs


class Final(Choice, noun="final choice"):
    """How the last step picks x0 from p(x0 | x_t): a draw, or the most probable value."""

    SAMPLE = "sample"
    ARGMAX = "argmax"


def grid(process: DiscreteProcess, steps: int | None = None) -> list[int]:
    """``steps`` + 1 integer times from T down to 0, evenly spaced (None: every step)."""
    T = process.num_steps
    steps = T if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..T = {T}, got {steps!r}")
    return [round(T * (steps - i) / steps) for i in range(steps + 1)]


def prior_sample(process: DiscreteProcess, shape, generator=None, device=None) -> Tensor:
    """x_T ~ the process's stationary distribution: integers of ``shape``."""
    probs = process.prior().expand(*shape, process.num_states)
    return categorical(probs, generator).to(device)


def _step(process, x, p0, s: int, t: int, final: Final, generator) -> Tensor:
    """x_s ~ p(x_s | x_t) for s > 0; at s = 0 the data values (a draw or the argmax)."""
    probs = reverse_probs(process, x, p0, s, t)
    if s > 0:
        return categorical(probs, generator)
    data = probs[..., : process.categories]
    return data.argmax(-1) if final is Final.ARGMAX else categorical(data, generator)


def ancestral(
    denoiser: DiscreteDenoiser,
    x: Tensor,
    times: list[int],
    *,
    generator: torch.Generator | None = None,
    final: Final | str = Final.SAMPLE,
    callback: Callable[[int], None] | None = None,
    **cond: Any,
) -> Tensor:
    """Ancestral sampling from states x at times[0] along ``times`` (decreasing to 0)."""
    final, process = Final.parse(final), denoiser.process
    for t, s in itertools.pairwise(times):
        p0 = torch.softmax(denoiser(x, t, **cond).to(torch.float64), dim=-1)
        x = _step(process, x, p0, s, t, final, generator)
        if callback is not None:
            callback(t)
    return x


def cached(
    denoiser: DiscreteDenoiser,
    x: Tensor,
    times: list[int],
    *,
    generator: torch.Generator | None = None,
    final: Final | str = Final.SAMPLE,
    callback: Callable[[int], None] | None = None,
    **cond: Any,
) -> Tensor:
    """Ancestral sampling of an absorbing process that evaluates the denoiser only after a
    step changed some coordinate (see the module docstring)."""
    final, process = Final.parse(final), denoiser.process
    if process.kind is not Kind.ABSORBING:
        raise ValueError(
            f"the cached sampler needs the absorbing kind (p(x0 | x_t) then depends on x_t "
            f"only), got {process.kind.value!r}; use 'ancestral'"
        )
    p0, seen = None, None
    for t, s in itertools.pairwise(times):
        if p0 is None or not torch.equal(x, seen):
            p0 = torch.softmax(denoiser(x, t, **cond).to(torch.float64), dim=-1)
            seen = x
        x = _step(process, x, p0, s, t, final, generator)
        if callback is not None:
            callback(t)
    return x


#: sampler name -> function (``sample(..., sampler=name)``)
REGISTRY: dict[str, Callable[..., Tensor]] = {"ancestral": ancestral, "cached": cached}


class _Counting(DiscreteDenoiser):
    """Counts its calls (network evaluations)."""

    def __init__(self, denoiser: DiscreteDenoiser) -> None:
        self.denoiser, self.process, self.calls = denoiser, denoiser.process, 0

    def __call__(self, x_t: Tensor, t, **cond) -> Tensor:
        self.calls += 1
        return self.denoiser(x_t, t, **cond)


@dataclass(frozen=True)
class DiscreteSamples:
    """Integer samples ``x``, the number of denoiser evaluations ``nfe`` and the ``times``."""

    x: Tensor
    nfe: int
    times: list[int] = field(default_factory=list)


def get(name: str) -> Callable[..., Tensor]:
    """The discrete sampler called ``name``, or a ValueError listing them."""
    if name not in REGISTRY:
        raise ValueError(f"unknown discrete sampler {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]


@torch.no_grad()
def sample(
    denoiser: DiscreteDenoiser,
    shape: tuple[int, ...],
    *,
    sampler: str = "ancestral",
    steps: int | None = None,
    final: Final | str = Final.SAMPLE,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    **cond: Any,
) -> DiscreteSamples:
    """Draw samples of ``shape`` = (n, *D): x_T from the prior, then ``steps`` evenly spaced
    steps (default: all T) of the named sampler."""
    function = get(sampler)
    if not shape or shape[0] < 1:
        raise ValueError(f"the number of samples must be >= 1, got shape {tuple(shape)}")
    times = grid(denoiser.process, steps)
    x = prior_sample(denoiser.process, tuple(shape), generator, device)
    counting = _Counting(denoiser)
    with tqdm(
        total=len(times) - 1, desc=f"{sampler} ({len(times) - 1} steps)", disable=not progress
    ) as bar:
        x = function(
            counting,
            x,
            times,
            generator=generator,
            final=final,
            callback=lambda _: bar.update(1),
            **cond,
        )
    return DiscreteSamples(x, counting.calls, times)
