"""Shape and dtype helpers shared by every module (DESIGN.md, style rule 7).

Per-sample scalars (one value per batch element, e.g. alpha(t) for t: [B]) are broadcast
against data x: [B, *D] by exactly one helper, `expand_to`, so that code is the same for 2-D
points and for images.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def expand_to(coef: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast a per-sample coefficient against ``x`` and cast it to ``x``'s dtype.

    Args:
        coef: a Python number, a 0-dim tensor, or a tensor of shape [B] (one value per sample).
        x: data of shape [B, *D].

    Returns:
        a tensor of shape [B, 1, ..., 1] (or [] for a scalar) on ``x``'s device, in
        ``x``'s dtype, ready to multiply ``x``. Coefficients are computed in float64 by the
        callers and rounded once here.
    """
    coef = torch.as_tensor(coef, device=x.device)
    if coef.ndim == 0:
        return coef.to(x.dtype)
    if coef.ndim != 1 or coef.shape[0] != x.shape[0]:
        raise ValueError(
            f"a per-sample coefficient must have shape [B] with B = x.shape[0] = {x.shape[0]}, "
            f"got shape {tuple(coef.shape)}"
        )
    return coef.to(x.dtype).reshape(coef.shape[0], *([1] * (x.ndim - 1)))


def batch_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Return ``t`` as a float64 tensor of shape [B] matching the batch of ``x``: [B, *D].

    A Python number or 0-dim tensor is repeated for every sample; a [B] tensor is kept.
    """
    t = torch.as_tensor(t, device=x.device, dtype=torch.float64)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"t must be a scalar or have shape [B] with B = x.shape[0] = {x.shape[0]}, "
            f"got shape {tuple(t.shape)}"
        )
    return t


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum over every dimension but the first: [B, *D] -> [B]."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def bits_per_dim(nats: Tensor, x: Tensor) -> Tensor:
    """Nats per sample [B] of data x [B, *D] as bits per dimension [B]: nats / (d ln 2)."""
    return nats / (x[0].numel() * math.log(2.0))


def check_finite(name: str, x: Tensor) -> None:
    """Raise a ValueError naming ``name`` if ``x`` holds a NaN or an infinity."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values; clean or rescale the input")


def randn(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """N(0, I) of ``shape`` on ``device``, drawn on the generator's own device (so a CPU
    generator drives GPU runs too, and the same seed gives the same numbers everywhere)."""
    where = generator.device if generator is not None else device
    z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=where)
    return z if device is None else z.to(device)


def _accumulate(out: Tensor, c: float, y: Tensor) -> Tensor:
    """out + c y in the promoted dtype of the two, in place where out already has it."""
    if y.dtype != out.dtype:
        out = out.to(torch.promote_types(out.dtype, y.dtype))
    return out.add_(y, alpha=c) if c != 0.0 else out


def scaled_sum(a: float, x: Tensor, b: float, y: Tensor) -> Tensor:
    """a x + b y for Python-float coefficients: two kernels and one new tensor."""
    return _accumulate(x * a, b, y)


class Combination:
    """sum_i c_i x_i: tensors x_i of one shape with Python-float coefficients c_i, evaluated
    lazily. Sums, differences and scaling by numbers only update the coefficients, so a
    sampler writes its update as the formula (divided differences, Taylor terms) and
    ``value()`` then costs one kernel per distinct tensor (terms of the same tensor merge)
    and one new tensor, instead of one of each per operation."""

    __slots__ = ("terms",)

    def __init__(self, terms: tuple[tuple[float, Tensor], ...]) -> None:
        self.terms = terms

    @classmethod
    def of(cls, x: Tensor) -> Combination:
        """The combination 1 * x."""
        return cls(((1.0, x),))

    def __add__(self, other: Combination) -> Combination:
        return Combination(self.terms + other.terms)

    def __mul__(self, c: float) -> Combination:
        return Combination(tuple((c * a, x) for a, x in self.terms))

    __rmul__ = __mul__

    def __neg__(self) -> Combination:
        return self * -1.0

    def __sub__(self, other: Combination) -> Combination:
        return self + -other

    def __truediv__(self, c: float) -> Combination:
        return self * (1.0 / c)

    def value(self) -> Tensor:
        """The tensor sum_i c_i x_i, in the promoted dtype of the x_i (terms after the first
        with coefficient 0 cost nothing)."""
        merged: dict[int, list] = {}
        for c, x in self.terms:
            if id(x) in merged:
                merged[id(x)][0] += c
            else:
                merged[id(x)] = [c, x]
        terms = iter(merged.values())
        c, x = next(terms)
        out = x * float(c)
        for c, y in terms:
            out = _accumulate(out, float(c), y)
        return out


def lazy(*tensors: Tensor) -> tuple[Combination, ...]:
    """Each tensor as a ``Combination`` (the start of a lazily evaluated update)."""
    return tuple(Combination.of(x) for x in tensors)
