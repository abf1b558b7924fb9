"""Sampling discrete diffusion models: ancestral steps over all T steps or fewer, for D3PM
processes (integer steps) and masked diffusion (times in [0, 1]) alike.

From x_T ~ prior, each step from t to an earlier s draws x_s ~ p(x_s | x_t), the
x0-parameterised reverse step between the two times (``rediff.discrete.reverse``; Q_{s->t}
is the product of the skipped one-step matrices, so fewer steps are exact where a single
step's posterior is: for one coordinate, one step from T with the exact posterior is exact).
The last step, to s = 0, returns the data values: a draw from p(x0 | x_t) (``final =
"sample"``) or its most probable value (``"argmax"``).

``cached`` (absorbing kind only) evaluates the denoiser again only on the samples in which
some coordinate changed since their last evaluation (conditioning tensors are indexed
with them): the absorbing process's exact posterior p(x0 | x_t)
depends on t only through which tokens are masked, so reusing it is exact for such
denoisers (MDLM's caching; for a time-conditioned network it reuses the output of the last
evaluated step). Both take ``generator=``, show a progress bar and count evaluations.

``top_p`` keeps, before each step, the smallest set of values of p(x0 | x_t) whose mass
reaches top_p (the most probable always; nucleus sampling, Holtzman et al. 2020) and
renormalises: 1 leaves the model as it is, 0 keeps only the most probable value (greedy).
``known`` (infilling, absorbing processes: the discrete counterpart of inpainting) starts
from x_T with the known tokens already unmasked; the absorbing chain never changes an
unmasked token, so the samples keep them and the rest is drawn given them (for the exact
denoiser, from the exact conditional distribution as the steps get fine).
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
from rediff.discrete.process import Kind, PerCoordinate, categorical
from rediff.discrete.reverse import reverse_probs


class Final(Choice, noun="final choice"):
    """How the last step picks x0 from p(x0 | x_t): a draw, or the most probable value."""

    SAMPLE = "sample"
    ARGMAX = "argmax"


def prior_sample(process: PerCoordinate, shape, generator=None, device=None) -> Tensor:
    """x_T ~ the process's stationary distribution: integers of ``shape``."""
    probs = process.prior().expand(*shape, process.num_states)
    return categorical(probs, generator).to(device)


def nucleus(probs: Tensor, top_p: float) -> Tensor:
    """``probs`` [..., K] restricted to each row's nucleus, the values whose preceding mass
    (in decreasing order) is below ``top_p`` (the most probable always kept), renormalised."""
    if top_p >= 1.0:
        return probs
    ordered, order = probs.sort(dim=-1, descending=True)
    before = ordered.cumsum(-1) - ordered
    keep = before < top_p
    keep[..., 0] = True
    kept = torch.zeros_like(probs).scatter(-1, order, torch.where(keep, ordered, 0.0))
    return kept / kept.sum(-1, keepdim=True)


def check_top_p(top_p: float) -> float:
    if not (isinstance(top_p, (int, float)) and 0.0 <= top_p <= 1.0):
        raise ValueError(f"top_p must be a number in [0, 1] (0: greedy, 1: plain), got {top_p!r}")
    return float(top_p)


def _x0_probs(denoiser, x: Tensor, t, top_p: float, cond) -> Tensor:
    """p(x0 | x_t) from the denoiser's logits, float64, within the nucleus."""
    return nucleus(torch.softmax(denoiser(x, t, **cond).to(torch.float64), dim=-1), top_p)


def _step(process, x, p0, s, t, final: Final, generator) -> Tensor:
    """x_s ~ p(x_s | x_t) for s > 0; at s = 0 the data values (a draw or the argmax)."""
    probs = reverse_probs(process, x, p0, s, t)
    if s > 0:
        return categorical(probs, generator)
    data = probs[..., : process.categories]
    return data.argmax(-1) if final is Final.ARGMAX else categorical(data, generator)


def _unmask(denoiser, x, times, generator, final, top_p, callback, cond, reuse: bool):
    """The reverse steps along ``times``; with ``reuse`` the denoiser is evaluated again only
    on the samples that changed since their last evaluation (conditioning tensors indexed
    with them)."""
    final, process, top_p = Final.parse(final), denoiser.process, check_top_p(top_p)
    p0, seen = None, None
    for t, s in itertools.pairwise(times):
        if p0 is None or not reuse:
            p0, seen = _x0_probs(denoiser, x, t, top_p, cond), x
        changed = (x != seen).reshape(x.shape[0], -1).any(1).nonzero()[:, 0]
        if len(changed):
            part = {key: value[changed] for key, value in cond.items()}
            p0 = p0.index_put((changed,), _x0_probs(denoiser, x[changed], t, top_p, part))
            seen = x
        x = _step(process, x, p0, s, t, final, generator)
        if callback is not None:
            callback(t)
    return x


def ancestral(
    denoiser: DiscreteDenoiser,
    x: Tensor,
    times: list[int],
    *,
    generator: torch.Generator | None = None,
    final: Final | str = Final.SAMPLE,
    top_p: float = 1.0,
    callback: Callable[[int], None] | None = None,
    **cond: Any,
) -> Tensor:
    """Ancestral sampling from states x at times[0] along ``times`` (decreasing to 0)."""
    return _unmask(denoiser, x, times, generator, final, top_p, callback, cond, reuse=False)


def cached(
    denoiser: DiscreteDenoiser,
    x: Tensor,
    times: list[int],
    *,
    generator: torch.Generator | None = None,
    final: Final | str = Final.SAMPLE,
    top_p: float = 1.0,
    callback: Callable[[int], None] | None = None,
    **cond: Any,
) -> Tensor:
    """Ancestral sampling of an absorbing process that evaluates the denoiser again only on
    the samples that changed since their last evaluation (see the module docstring)."""
    if denoiser.process.kind is not Kind.ABSORBING:
        raise ValueError(
            f"the cached sampler needs the absorbing kind (p(x0 | x_t) then depends on x_t "
            f"only), got {denoiser.process.kind.value!r}; use 'ancestral'"
        )
    return _unmask(denoiser, x, times, generator, final, top_p, callback, cond, reuse=True)


def _with_known(process: PerCoordinate, x: Tensor, known: Tensor) -> Tensor:
    """x_T with the ``known`` tokens (>= 0) in place, for an absorbing process."""
    if process.mask is None:
        raise ValueError(
            f"infilling (known tokens) needs an absorbing process, which never changes an "
            f"unmasked token; this one is {process!r}"
        )
    known = torch.as_tensor(known, device=x.device)
    if known.is_floating_point() or known.shape not in (x.shape, x.shape[1:]):
        raise ValueError(
            f"known tokens must be integers shaped like one sample {list(x.shape[1:])} or all "
            f"{list(x.shape)}, got {known.dtype} {list(known.shape)}"
        )
    if bool((known >= process.categories).any()) or bool((known < -1).any()):
        raise ValueError(
            f"known tokens must lie in 0..{process.categories - 1}, or be -1 where the token "
            "is to be sampled"
        )
    return torch.where(known >= 0, known.long(), x)


#: sampler name -> function (``sample(..., sampler=name)``)
REGISTRY: dict[str, Callable[..., Tensor]] = {"ancestral": ancestral, "cached": cached}
DEFAULT = "ancestral"


class _Counting(DiscreteDenoiser):
    """Counts its calls and the samples evaluated (network evaluations)."""

    def __init__(self, denoiser: DiscreteDenoiser) -> None:
        self.denoiser, self.process, self.calls, self.rows = denoiser, denoiser.process, 0, 0

    def __call__(self, x_t: Tensor, t, **cond) -> Tensor:
        self.calls, self.rows = self.calls + 1, self.rows + x_t.shape[0]
        return self.denoiser(x_t, t, **cond)


@dataclass(frozen=True)
class DiscreteSamples:
    """Integer samples ``x``, the number of denoiser calls ``nfe``, the ``times``, and the
    network evaluations per sample (``per_sample``: below ``nfe`` where the cached sampler
    evaluated only the samples that changed)."""

    x: Tensor
    nfe: int
    times: list[float] = field(default_factory=list)
    per_sample: float = 0.0


@dataclass(frozen=True)
class OneSampler:
    """The sampler registry of a model family that samples one way only (the autoregressive
    baseline, insertion/deletion), with the ``get(name)`` and ``DEFAULT`` of the others;
    ``how`` says what that way is, in the error for any other name."""

    DEFAULT: str
    function: Callable[..., Any]
    how: str

    def get(self, name: str) -> Callable[..., Any]:
        if name != self.DEFAULT:
            raise ValueError(f"{self.how}: sampler {self.DEFAULT!r}, not {name!r}")
        return self.function


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
    top_p: float = 1.0,
    known: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    **cond: Any,
) -> DiscreteSamples:
    """Draw samples of ``shape`` = (n, *D): x_T from the prior, then ``steps`` evenly spaced
    steps (default: all T; 1000 for masked diffusion) of the named sampler. ``known``:
    integers [*D] or [n, *D], the tokens to keep (>= 0) and those to sample (-1)."""
    function = get(sampler)
    if not shape or shape[0] < 1:
        raise ValueError(f"the number of samples must be >= 1, got shape {tuple(shape)}")
    process = denoiser.process
    times = process.grid(steps)
    x = prior_sample(process, tuple(shape), generator, device)
    if known is not None:
        x = _with_known(process, x, known)
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
            top_p=top_p,
            callback=lambda _: bar.update(1),
            **cond,
        )
    return DiscreteSamples(x, counting.calls, times, counting.rows / shape[0])
