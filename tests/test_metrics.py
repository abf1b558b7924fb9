"""Metrics against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from rediff import data, metrics


def test_sliced_wasserstein_of_a_shift_is_its_norm_over_sqrt_d():
    """For y = x + c, every projection shifts by theta . c, so SW_2^2 = E (theta . c)^2 =
    ||c||^2 / d for theta uniform on the sphere."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 4, generator=gen, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    sw = metrics.sliced_wasserstein(x, x + c, projections=4000, generator=gen)
    assert sw == pytest.approx(float(c.norm()) / math.sqrt(4), rel=0.03)
    assert metrics.sliced_wasserstein(x, x, generator=gen) == 0.0
    with pytest.raises(ValueError, match="equal shape"):
        metrics.sliced_wasserstein(x, x[:10])


def test_mode_weights_and_density_gap():
    mix = data.GaussianMixture(
        [[-5.0, 0.0], [5.0, 0.0]], 0.1 * torch.eye(2).expand(2, 2, 2), [0.25, 0.75]
    )
    gen = torch.Generator().manual_seed(1)
    x = mix.sample(20000, generator=gen)
    assert metrics.mode_weights_tv(mix, x) < 0.01
    only_left = x[x[:, 0] < 0]
    assert metrics.mode_weights_tv(mix, only_left) == pytest.approx(0.75)
    assert abs(metrics.log_density_gap(mix, x, mix.sample(20000, generator=gen))) < 0.03
    assert metrics.log_density_gap(mix, x + 1.0, x) > 1.0
    with pytest.raises(ValueError, match="NaN"):
        metrics.mode_weights_tv(mix, torch.full((3, 2), float("nan")))


def test_energy_distance_of_shifted_normals():
    """For X ~ N(0, 1), Y ~ N(m, 1): X - Y ~ N(-m, 2) and X - X' ~ N(0, 2), with
    E|N(mu, s^2)| = s sqrt(2/pi) exp(-mu^2 / 2s^2) + mu (1 - 2 Phi(-mu/s))."""
    gen = torch.Generator().manual_seed(3)
    m, s = 1.0, math.sqrt(2.0)

    def abs_mean(mu):
        phi = 0.5 * (1 + math.erf(-mu / s / math.sqrt(2)))
        return s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s * s)) + mu * (1 - 2 * phi)

    expected = 2 * abs_mean(m) - 2 * abs_mean(0.0)
    x = torch.randn(6000, 1, generator=gen, dtype=torch.float64)
    y = m + torch.randn(6000, 1, generator=gen, dtype=torch.float64)
    assert metrics.energy_distance(x, y) == pytest.approx(expected, rel=0.05)
    same = metrics.energy_distance(x, torch.randn(6000, 1, generator=gen, dtype=torch.float64))
    assert abs(same) < 0.01
