"""The divergence (trace of the Jacobian) of a vector field, exactly or by Hutchinson's
estimator, for score matching and probability-flow likelihoods.

- exact: tr(df/dx) = sum_i d f_i / d x_i, one reverse-mode pass per dimension (small d);
- Hutchinson (1990) / Skilling (1989): tr(J) = E_v[v^T J v] for any probe with E[v v^T] = I:
  Rademacher (+-1, the lower-variance choice) or standard Gaussian; each probe costs one
  vector-Jacobian product.
"""

from __future__ import annotations

import torch

from rediff._choices import Choice
from rediff._tensor import Tensor, randn


class Probe(Choice):
    """Hutchinson probe distribution."""

    RADEMACHER = "rademacher"
    GAUSSIAN = "gaussian"


def draw_probes(x: Tensor, n: int, kind: Probe | str = Probe.RADEMACHER, generator=None) -> Tensor:
    """n probes shaped like x: [n, *x.shape], with E[v v^T] = I."""
    kind = Probe.parse(kind)
    if n < 1:
        raise ValueError(f"the number of probes must be >= 1, got {n}")
    v = randn((n, *x.shape), generator, x.dtype, x.device)
    return torch.sign(v) if kind is Probe.RADEMACHER else v  # a fair sign; P(v = 0) = 0


def exact(f: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    """tr(df/dx) per sample for f = F(x) computed with x.requires_grad: [B, *D] -> [B].
    Each sample's f may depend on that sample's x only."""
    flat = f.reshape(f.shape[0], -1)
    total = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    for i in range(flat.shape[1]):
        (g,) = torch.autograd.grad(
            flat[:, i].sum(), x, create_graph=create_graph, retain_graph=True
        )
        total = total + g.reshape(g.shape[0], -1)[:, i]
    return total


def hutchinson(f: Tensor, x: Tensor, probes: Tensor, create_graph: bool = False) -> Tensor:
    """The mean over probes v [n, *D] of v^T (df/dx) v per sample: [B]. All n
    vector-Jacobian products come from one batched backward pass (``is_grads_batched``:
    vmap over the graph), so many probes cost one call, not n; a graph that vmap cannot
    batch (diffusers' UNet2DModel asks for memory formats) takes one pass per probe."""
    try:
        (vjps,) = torch.autograd.grad(
            f, x, probes, create_graph=create_graph, retain_graph=True, is_grads_batched=True
        )
    except RuntimeError as error:
        if "vmap" not in str(error):
            raise
        vjps = torch.stack(
            [
                torch.autograd.grad(f, x, v, create_graph=create_graph, retain_graph=True)[0]
                for v in probes
            ]
        )
    products = (vjps * probes).reshape(probes.shape[0], f.shape[0], -1).sum(dim=2)
    return products.mean(dim=0)
