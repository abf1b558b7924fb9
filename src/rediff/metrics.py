"""Sample-quality metrics for low-dimensional data with known truth.

- ``sliced_wasserstein``: SW_2 between two equally sized samples (Bonneel et al. 2015):
  SW_2^2 = E_theta W_2^2(theta . x, theta . y), theta uniform on the unit sphere, where the
  1-D W_2 between empirical measures of equal size pairs the sorted projections.
- ``energy_distance``: D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo 2013),
  zero iff the laws agree; within-sample means exclude the diagonal (unbiased).
- ``log_density_gap``: mean log p(reference) - mean log p(samples) under an exact density.
- ``mode_weights_tv``: total variation between a mixture's weights and the fractions of
  samples whose most probable component is each k.
- ``frechet_distance``: between Gaussians fitted to two sets of features (FID's formula).

``Score`` is one named value with its floor (the same measure of real data against real
data), as ``rediff eval`` reports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rediff._tensor import Tensor, check_finite
from rediff.data.mixture import GaussianMixture


@dataclass(frozen=True)
class Score:
    """One measured quantity, with the value real data reach (its floor) where there is one."""

    name: str
    value: float
    floor: float | None = None


def _flat(name: str, x: Tensor) -> Tensor:
    check_finite(name, x)
    return x.reshape(x.shape[0], -1).to(torch.float64)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    *,
    projections: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """SW_2 between samples x and y ([N, *D] each, same N), with ``projections`` random
    directions drawn from ``generator``."""
    x, y = _flat("x", x), _flat("y", y)
    if x.shape != y.shape:
        raise ValueError(
            f"sliced_wasserstein needs samples of equal shape, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}; subsample the larger one"
        )
    theta = torch.randn(x.shape[1], projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px = torch.sort(x @ theta.to(x.device), dim=0).values
    py = torch.sort(y @ theta.to(y.device), dim=0).values
    return float((px - py).square().mean().sqrt())


def _mean_distance(a: Tensor, b: Tensor, exclude_diagonal: bool, chunk: int = 2048) -> float:
    total = 0.0
    for i in range(0, a.shape[0], chunk):
        total += float(torch.cdist(a[i : i + chunk], b).sum())
    pairs = a.shape[0] * b.shape[0] - (a.shape[0] if exclude_diagonal else 0)
    return total / pairs


def energy_distance(x: Tensor, y: Tensor) -> float:
    """The squared energy distance D^2 between samples x: [N, *D] and y: [M, *D]."""
    x, y = _flat("x", x), _flat("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples differ in dimension: {x.shape[1]} and {y.shape[1]}")
    return 2 * _mean_distance(x, y, False) - _mean_distance(x, x, True) - _mean_distance(y, y, True)


def log_density_gap(mixture: GaussianMixture, samples: Tensor, reference: Tensor) -> float:
    """mean log p(reference) - mean log p(samples) under the exact mixture density (nats)."""
    check_finite("samples", samples)
    check_finite("reference", reference)
    return float(mixture.log_prob(reference).mean() - mixture.log_prob(samples).mean())


def mode_weights_tv(mixture: GaussianMixture, samples: Tensor) -> float:
    """0.5 sum_k |fraction of samples assigned to k - w_k|, assigning each sample to its most
    probable component under the clean mixture."""
    check_finite("samples", samples)
    assigned = mixture.component_probs(samples).argmax(dim=1)
    counts = torch.bincount(assigned, minlength=mixture.num_components)
    fractions = counts.double() / samples.shape[0]
    return float(0.5 * (fractions - mixture.weights).abs().sum())


def frechet_distance(x: Tensor, y: Tensor) -> float:
    """The Frechet distance between Gaussians fitted to features x: [N, F] and y: [M, F]
    (Heusel et al. 2017, FID's formula):

        |mu_x - mu_y|^2 + tr(C_x + C_y - 2 (C_x^{1/2} C_y C_x^{1/2})^{1/2}),

    with the matrix square roots taken by symmetric eigendecompositions in float64.
    """
    x, y = _flat("x", x), _flat("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"features differ in dimension: {x.shape[1]} and {y.shape[1]}")
    if min(x.shape[0], y.shape[0]) < 2:
        raise ValueError("the Frechet distance needs at least 2 samples on each side")
    cx, cy = torch.cov(x.T).reshape(x.shape[1], -1), torch.cov(y.T).reshape(y.shape[1], -1)
    root_x = _psd_sqrt(cx)
    cross = _psd_sqrt(root_x @ cy @ root_x)
    mean_term = (x.mean(0) - y.mean(0)).square().sum()
    return float(mean_term + cx.trace() + cy.trace() - 2 * cross.trace())


def _psd_sqrt(c: Tensor) -> Tensor:
    """The square root of a symmetric positive semi-definite matrix (negative round-off
    eigenvalues set to zero)."""
    values, vectors = torch.linalg.eigh(0.5 * (c + c.T))
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T
