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
