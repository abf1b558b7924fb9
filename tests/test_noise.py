"""Noise sources: the Brownian path is a Brownian motion, and a sampler driven by it follows
one path whatever its step count."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import gaussian_data

from rediff import grids, samplers, schedules
from rediff.noise import BrownianNoise

F64 = torch.float64


def test_the_brownian_path_has_brownian_increments():
    """W(s) ~ N(0, s), increments over disjoint intervals are uncorrelated with variance the
    interval's length (40,000 independent coordinates, 4 standard errors: Var of a sample
    variance is 2 v^2 / n), and the path does not depend on the order of queries."""
    n = 40000
    w = BrownianNoise(7, horizon=2.0)
    points = (0.3, 0.7, 1.9)
    values = [w.path(s, (n,)) for s in points]
    for s, v in zip(points, values, strict=True):
        assert abs(float(v.var()) - s) < 4 * s * math.sqrt(2 / n)
    a, b = values[1] - values[0], values[2] - values[1]
    assert abs(float(a.var()) - 0.4) < 4 * 0.4 * math.sqrt(2 / n)
    assert abs(float((a * b).mean())) < 4 * math.sqrt(0.4 * 1.2 / n)
    again = BrownianNoise(7, horizon=2.0)
    assert torch.equal(again.path(1.9, (n,)), values[2])  # queried first this time
    assert torch.equal(again.path(0.3, (n,)), values[0])


def test_brownian_draws_are_normalised_increments():
    w = BrownianNoise(1)
    z = w.noise((5,), F64, None, step=3, t=0.8, t_next=0.5)
    torch.testing.assert_close(z, (w.path(0.8, (5,)) - w.path(0.5, (5,))) / math.sqrt(0.3))
    with pytest.raises(ValueError, match=r"outside \[0, horizon = 1.0\]"):
        w.noise((5,), F64, None, step=0, t=1.5, t_next=1.0)
    with pytest.raises(ValueError, match="horizon must be finite and > 0"):
        BrownianNoise(0, horizon=0.0)


def test_a_sampler_on_a_brownian_path_converges_pathwise():
    """Euler-Maruyama on the VP SDE driven by one Brownian path: the samples at N and 2N
    steps approach each other at its strong order (1 for additive noise: the gap halves per
    doubling, measured 0.070, 0.035, 0.017, 0.009); with fresh noise they stay O(1) apart."""
    sched = schedules.LinearVP()
    den = gaussian_data().denoiser(sched)

    def run(steps, source):
        x = sched.prior_sample((500, 2), generator=source, dtype=F64)
        ts = grids.make(sched, steps, "uniform")
        return samplers.euler_maruyama(den, x, ts, generator=source)

    paths = {n: run(n, BrownianNoise(3)) for n in (25, 50, 200, 400)}
    coarse = float((paths[25] - paths[50]).norm(dim=1).mean())
    fine = float((paths[200] - paths[400]).norm(dim=1).mean())
    assert fine < coarse / 6, (coarse, fine)  # order >= 0.86 over three doublings
    fresh = [run(n, torch.Generator().manual_seed(3)) for n in (200, 400)]
    assert float((fresh[0] - fresh[1]).norm(dim=1).mean()) > 0.5
