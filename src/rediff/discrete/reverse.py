"""The x0-parameterised reverse step of a discrete process, the one formula that the bound,
the samplers and the posterior q(x_s | x_t, x0) all use.

For s < t and a distribution p(x0 | x_t) over the K data values of each coordinate,

    p(x_s | x_t) = sum_x0 q(x_s | x_t, x0) p(x0 | x_t)
                 = Q_{s->t}[x_s, x_t] sum_x0 Qbar_s[x0, x_s] p(x0 | x_t) / Qbar_t[x0, x_t]

(Austin et al. 2021, eqs. 3-4: the mixture of posteriors. Values of x0 that cannot have
produced x_t, Qbar_t[x0, x_t] = 0, are left out and the rest renormalised, so a predicted
p(x0 | x_t) is always made consistent with x_t. An absorbing chain's unmasked tokens are
copied: what the formula gives wherever q_t reaches x_t, and the definition where it does
not, such as tokens known in advance at t = T when infilling.) With p(x0 | x_t) the exact
posterior this is the exact reverse step of one coordinate; with a one-hot x0 it is the
posterior q(x_s | x_t, x0) itself. At s = 0 it is p(x0 | x_t) restricted to the x0
consistent with x_t (the decoder). Computed in float64, one [B*D, K] x [K, S] product per
call.
"""

from __future__ import annotations

import torch

from rediff._tensor import Tensor
from rediff.discrete.process import PerCoordinate


def _matrices(process: PerCoordinate, s: float | Tensor, t: float | Tensor, batch: int):
    """Q_{s->t}, Qbar_s and Qbar_t as [B, S, S]: for one pair of times (integer steps, or
    a MaskedProcess's floats), or per sample for integer tensors with s = t - 1 (the D3PM
    bound's terms)."""
    if isinstance(s, (int, float)) and isinstance(t, (int, float)):  # one pair of times
        mats = (process.transition(s, t), process.cumulative(s), process.cumulative(t))
        return tuple(m.expand(batch, *m.shape) for m in mats)
    s, t = torch.as_tensor(s).long().cpu(), torch.as_tensor(t).long().cpu()
    if s.shape != (batch,) or t.shape != (batch,) or not torch.equal(s, t - 1):
        raise ValueError("per-sample reverse steps take s = t - 1, both of shape [B]")
    if bool((t < 1).any()) or bool((t > process.num_steps).any()):
        raise ValueError(f"steps t must lie in 1..{process.num_steps}")
    return process._steps[t], process.cumulative(s), process.cumulative(t)


def reverse_probs(
    process: PerCoordinate, x_t: Tensor, x0_probs: Tensor, s: int | Tensor, t: int | Tensor
) -> Tensor:
    """p(x_s | x_t) (see the module docstring) for x_t: [B, *D] states, x0_probs: [B, *D, K]
    (rows summing to 1): float64 probabilities [B, *D, S]."""
    B, K, S = x_t.shape[0], process.categories, process.num_states
    A, Bs, Bt = (m.to(x_t.device) for m in _matrices(process, s, t, B))
    flat = x_t.reshape(B, -1)  # [B, D]
    p0 = x0_probs.reshape(B, -1, K).to(torch.float64)
    # Q_{s->t}[j, x_t] for every j, and Qbar_t[x0, x_t] for every x0: [B, D, S] and [B, D, K]
    into = A.gather(2, flat[:, None, :].expand(B, S, flat.shape[1])).transpose(1, 2)
    reach = Bt[:, :K, :].gather(2, flat[:, None, :].expand(B, K, flat.shape[1])).transpose(1, 2)
    weights = torch.where(reach > 0, p0 / reach.clamp_min(1e-300), torch.zeros_like(p0))
    out = into * torch.bmm(weights, Bs[:, :K, :])
    if process.mask is not None:  # an absorbing chain's unmasked token stays (module docstring)
        kept = torch.nn.functional.one_hot(flat, S).to(out.dtype)
        out = torch.where((flat != process.mask)[..., None], kept, out)
    total = out.sum(-1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError("p(x0 | x_t) puts no mass on any x0 that could have produced x_t")
    return (out / total).reshape(*x_t.shape, S)


def posterior_probs(
    process: PerCoordinate, x_t: Tensor, x0: Tensor, s: int | Tensor, t: int | Tensor
) -> Tensor:
    """q(x_s | x_t, x0) for integer x0 [B, *D]: float64 [B, *D, S] (Austin et al. 2021,
    eq. 3)."""
    one_hot = torch.nn.functional.one_hot(x0.long(), process.categories).to(torch.float64)
    return reverse_probs(process, x_t, one_hot, s, t)
