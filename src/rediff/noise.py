"""Where a sampler's randomness comes from, asked for step by step.

A sampler takes ``generator=``: a ``torch.Generator`` (or None: the global RNG), or a
``NoiseSource``. Every draw names the step it is for, ``step`` (-1 for x_T), and the two
times that step moves between, ``t`` -> ``t_next`` (equal for draws at one time, such as
Langevin corrector steps): k-diffusion's ``noise_sampler(sigma, sigma_next)`` is the model.
So a source can decide per step without watching the sampler run:

- ``SharedNoise(until, groups)``: groups of samples share x_T and the noise of the first
  ``until`` steps (Ho et al. 2020, section 4.3);
- ``BrownianNoise(seed)``: the increments of one Brownian path W over the time axis,
  z = (W(t) - W(t_next)) / sqrt(|t - t_next|), so a stochastic sampler follows the same path
  whatever its step count and converges pathwise as the steps grow (torchsde's Brownian tree,
  as k-diffusion's ``BrownianTreeNoiseSampler`` uses it).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from rediff._tensor import Tensor, randn

Shape = tuple[int, ...]


class NoiseSource(ABC):
    """The noise of a sampler's steps (see the module docstring)."""

    @abstractmethod
    def noise(
        self, shape: Shape, dtype: torch.dtype, device, *, step: int, t: float, t_next: float
    ) -> Tensor:
        """N(0, I) of ``shape`` for step ``step`` (-1: x_T), which moves from t to t_next."""


#: what samplers accept as ``generator=``
Randomness = torch.Generator | NoiseSource | None


def draw(
    generator: Randomness, shape: Shape, dtype: torch.dtype, device, *, step: int, t, t_next
) -> Tensor:
    """N(0, I) of ``shape`` for one step: from the NoiseSource, or fresh from the generator."""
    if isinstance(generator, NoiseSource):
        return generator.noise(
            tuple(shape), dtype, device, step=step, t=float(t), t_next=float(t_next)
        )
    return randn(shape, generator, dtype, device)


@dataclass(frozen=True)
class SharedNoise:
    """Samples that share their randomness (Ho et al. 2020, section 4.3 and figure 7): the
    batch is cut into ``groups`` consecutive groups; the members of a group share x_T and the
    noise injected in the first ``until`` steps, and draw their own afterwards. ``until`` = 0
    shares x_T only; ``until`` >= steps makes the members identical. ``rediff.sample(...,
    shared=SharedNoise(...))`` applies it (``source`` makes the NoiseSource)."""

    until: int
    groups: int = 1

    def __post_init__(self) -> None:
        for name, low in (("until", 0), ("groups", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"SharedNoise.{name} must be an int >= {low}, got {value!r}")

    def source(self, generator: torch.Generator | None, n: int) -> NoiseSource:
        """The NoiseSource for a batch of n samples drawn from ``generator``."""
        if n % self.groups:
            raise ValueError(
                f"SharedNoise.groups = {self.groups} must divide the number of samples {n}"
            )
        return _SharedDraws(self, generator)


@dataclass(frozen=True)
class _SharedDraws(NoiseSource):
    """One draw per group, repeated over its members, for the steps before ``until``."""

    shared: SharedNoise
    generator: torch.Generator | None

    def noise(self, shape, dtype, device, *, step, t, t_next) -> Tensor:
        if step >= self.shared.until:
            return randn(shape, self.generator, dtype, device)
        groups = self.shared.groups
        z = randn((groups, *shape[1:]), self.generator, dtype, device)
        return z.repeat_interleave(shape[0] // groups, dim=0)


class BrownianNoise(NoiseSource):
    """Increments of one Brownian path W on [0, horizon] (see the module docstring), built
    lazily as a binary tree: W(horizon) ~ N(0, horizon), and the midpoint of every interval
    [a, b] from the Brownian bridge, W(m) = (W(a) + W(b)) / 2 + sqrt((b - a) / 4) z_node, with
    z_node drawn from a generator seeded by (seed, node), so W(s) is the same for any query
    order; below ``horizon`` 2^-depth, W is linear. Draws at one time (t = t_next: x_T,
    Langevin corrector steps) are fresh normals from the seeded generator.

    Args:
        seed: the path.
        horizon: the largest time queried (a schedule's t_max; EDM: sigma_max).
        depth: levels of the tree (resolution horizon 2^-depth).
    """

    def __init__(self, seed: int, horizon: float = 1.0, depth: int = 24) -> None:
        if not (math.isfinite(horizon) and horizon > 0):
            raise ValueError(f"BrownianNoise.horizon must be finite and > 0, got {horizon!r}")
        self.seed, self.horizon, self.depth = int(seed), float(horizon), int(depth)
        self.fresh = torch.Generator().manual_seed(self.seed)

    def _z(self, node: int, shape: Shape) -> Tensor:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + node) % 2**63)
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    def path(self, s: float, shape: Shape) -> Tensor:
        """W(s) for s in [0, horizon], float64 of ``shape``."""
        if not 0.0 <= s <= self.horizon * (1 + 1e-12):
            raise ValueError(f"BrownianNoise: time {s} outside [0, horizon = {self.horizon}]")
        a, b = 0.0, self.horizon
        w_a, w_b = torch.zeros(shape, dtype=torch.float64), math.sqrt(b) * self._z(0, shape)
        node = 1
        for _ in range(self.depth):
            m = 0.5 * (a + b)
            w_m = 0.5 * (w_a + w_b) + math.sqrt(0.25 * (b - a)) * self._z(node, shape)
            node = 2 * node + (s >= m)
            a, b, w_a, w_b = (m, b, w_m, w_b) if s >= m else (a, m, w_a, w_m)
        return torch.lerp(w_a, w_b, (s - a) / (b - a))

    def noise(self, shape, dtype, device, *, step, t, t_next) -> Tensor:
        if t == t_next:
            return randn(shape, self.fresh, dtype, device)
        dw = self.path(max(t, t_next), shape) - self.path(min(t, t_next), shape)
        return (dw / math.sqrt(abs(t - t_next))).to(dtype=dtype, device=device)


@dataclass(frozen=True)
class _Offset(NoiseSource):
    """A source whose step numbers start at ``start`` (a sampler run on part of a grid)."""

    source: NoiseSource
    start: int

    def noise(self, shape, dtype, device, *, step, t, t_next) -> Tensor:
        step = step + self.start if step >= 0 else step
        return self.source.noise(shape, dtype, device, step=step, t=t, t_next=t_next)


def offset(generator: Randomness, start: int) -> Randomness:
    """``generator`` for a sampler that runs the grid from step ``start`` on: a NoiseSource
    is asked for steps ``start``, ``start + 1``, ...; generators are returned as they are."""
    return _Offset(generator, start) if isinstance(generator, NoiseSource) and start else generator
