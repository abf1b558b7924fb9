"""Grids tuned to a denoiser (rediff.tuning.optimize)."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import SCHEDULES

import rediff
from rediff import data, grids, samplers, tuning

F64 = torch.float64


def _held_out_error(den, ts, sampler="dpm++2m", n=512):
    """Mean squared distance per dimension to the ODE's own solution (from t_max to t_min,
    then the jump to 0), on x_T the fit never saw (seed 7)."""
    x_T = den.schedule.prior_sample((n, 2), generator=torch.Generator().manual_seed(7), dtype=F64)
    entry = samplers.get(sampler)
    span = torch.tensor([den.schedule.t_max, den.schedule.t_min, 0.0], dtype=F64)
    reference = samplers.ode(den, x_T, span, rtol=1e-7, atol=1e-7)
    x = entry.function(den, x_T, ts, **entry.options)
    return float((x - reference).square().mean())


@pytest.mark.parametrize("sampler", ["dpm++2m", "ddim"])
def test_a_tuned_grid_lowers_the_error_on_points_it_was_not_fit_on(sampler):
    """At 5 steps on the eight-Gaussian mixture, the grid fit on 256 starting points lowers
    the sampler's error against the exact ODE solution on 512 other starting points, and the
    tuned grid is a valid grid of the same length ending with the jump to 0."""
    den = data.eight_gaussians_mixture().denoiser(SCHEDULES["vp"]())
    start = grids.make(den.schedule, 5, samplers.get(sampler).spacing)
    tuned = tuning.optimize(
        den, (256, 2), 5, sampler=sampler, generator=torch.Generator().manual_seed(0)
    )
    assert tuned.shape == start.shape and tuned[0] == start[0] and tuned[-1] == 0
    assert bool((tuned[1:] < tuned[:-1]).all())
    before, after = _held_out_error(den, start, sampler), _held_out_error(den, tuned, sampler)
    assert after < 0.5 * before, (before, after)


def test_sample_takes_an_explicit_grid():
    den = data.eight_gaussians_mixture().denoiser(SCHEDULES["vp"]())
    ts = grids.make(den.schedule, 4, "karras")
    out = rediff.sample(den, (8, 2), sampler="dpm++2m", ts=ts, progress=False)
    assert out.nfe == 4 and torch.equal(out.ts, ts)
    with pytest.raises(ValueError, match="strictly decreasing"):
        rediff.sample(den, (8, 2), ts=ts.flip(0), progress=False)


def test_stochastic_and_adaptive_samplers_and_bad_rounds_are_refused():
    den = data.eight_gaussians_mixture().denoiser(SCHEDULES["vp"]())
    for name, kind in (("ddpm", "stochastic"), ("dpm++2m-sde", "stochastic"), ("ode", "adaptive")):
        with pytest.raises(ValueError, match=re.escape(f"{name!r} is {kind}: pick one of ddim")):
            tuning.optimize(den, (8, 2), 4, sampler=name)
    with pytest.raises(ValueError, match="rounds must be an integer >= 1"):
        tuning.optimize(den, (8, 2), 4, rounds=0)
