"""Two-dimensional toy data sets, each drawn with an explicit ``torch.Generator``.

All are centred near the origin with coordinates of order one, so every schedule's default
parameters suit them. ``toy(name, n, generator=g)`` picks one by name (configs and CLI);
``TOY_SETS`` lists the names.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from rediff._tensor import Tensor
from rediff.data.mixture import GaussianMixture


def _uniform(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _noise(n: int, scale: float, generator: torch.Generator | None) -> Tensor:
    return scale * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def two_moons(n: int, *, generator: torch.Generator | None = None, noise: float = 0.05) -> Tensor:
    """Two interleaved half circles (as scikit-learn's make_moons), centred: [n, 2]."""
    theta = math.pi * _uniform(n, generator)
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(theta), 1.0 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    points = torch.stack([x - 0.5, y - 0.25], dim=1)
    return (points + _noise(n, noise, generator)).float()


def swiss_roll(n: int, *, generator: torch.Generator | None = None, noise: float = 0.1) -> Tensor:
    """A 2-D swiss roll: r = theta / 5 along theta in [1.5 pi, 4.5 pi]: [n, 2]."""
    theta = 1.5 * math.pi * (1.0 + 2.0 * _uniform(n, generator))
    points = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], dim=1) / 5.0
    return (points + _noise(n, noise, generator)).float()


def eight_gaussians_mixture(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """Eight equally weighted isotropic Gaussians on a circle: the data of ``eight_gaussians``,
    with its exact denoiser available."""
    angles = torch.arange(8, dtype=torch.float64) * (2.0 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    covariances = (std**2) * torch.eye(2, dtype=torch.float64).expand(8, 2, 2)
    return GaussianMixture(means, covariances)


def eight_gaussians(n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Samples of ``eight_gaussians_mixture()``: [n, 2]."""
    return eight_gaussians_mixture().sample(n, generator=generator)


def checkerboard(n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Uniform on the dark squares of a 4x4 checkerboard over [-2, 2]^2: [n, 2]."""
    x = 4.0 * _uniform(n, generator) - 2.0
    row = torch.randint(0, 2, (n,), generator=generator).to(torch.float64)
    y = _uniform(n, generator) - 2.0 * row + torch.remainder(torch.floor(x), 2.0)
    return torch.stack([x, y], dim=1).float()


def ring(
    n: int, *, generator: torch.Generator | None = None, radius: float = 1.5, noise: float = 0.05
) -> Tensor:
    """A noisy circle of the given radius: [n, 2]."""
    theta = 2.0 * math.pi * _uniform(n, generator)
    points = radius * torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    return (points + _noise(n, noise, generator)).float()


TOY_SETS: dict[str, Callable[..., Tensor]] = {
    "moons": two_moons,
    "swiss_roll": swiss_roll,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "ring": ring,
}


def toy(name: str, n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Draw n points [n, 2] from the toy set called ``name`` (one of ``TOY_SETS``)."""
    if name not in TOY_SETS:
        raise ValueError(f"unknown toy data set {name!r}; valid names: {', '.join(TOY_SETS)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return TOY_SETS[name](n, generator=generator)
