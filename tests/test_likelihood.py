"""Probability-flow ODE likelihoods against exact densities."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SCHEDULES, gaussian_data

from rediff import data, divergence
from rediff.likelihood import log_likelihood


def _transport_error(mix, schedule, x, result):
    """|ODE nll - exact nll| per dimension with the prior's mismatch removed: the ODE maps
    p_{t_min} onto p_{t_max} exactly, so nll - log prior(latent) + log p_{t_max}(latent) must be
    -log p_{t_min}(x); what remains is the solver's error."""
    exact_end = mix.noised_log_prob(result.latent, schedule.t_max, schedule)
    transported = result.nll + result.prior - exact_end
    truth = -mix.noised_log_prob(x, schedule.t_min, schedule)
    return float((transported - truth).abs().max()) / result.dims


@pytest.mark.parametrize("name", ["vp", "subvp", "ddpm-linear", "ve", "edm"])
def test_gaussian_likelihood_matches_closed_form(name):
    schedule = SCHEDULES[name]()
    mix = gaussian_data()
    x = mix.sample(16, generator=torch.Generator().manual_seed(0)).double()
    result = log_likelihood(mix.denoiser(schedule), x, rtol=1e-7, atol=1e-7)
    assert _transport_error(mix, schedule, x, result) < 1e-4
    assert result.nll.shape == (16,) and result.latent.shape == x.shape and result.nfe > 0


def test_mixture_likelihood_within_a_hundredth_of_a_nat_per_dimension():
    schedule = SCHEDULES["vp"]()
    mix = data.eight_gaussians_mixture()
    x = mix.sample(32, generator=torch.Generator().manual_seed(1)).double()
    result = log_likelihood(mix.denoiser(schedule), x, rtol=1e-5, atol=1e-5)
    assert _transport_error(mix, schedule, x, result) < 0.01


def test_hutchinson_divergence_is_unbiased():
    schedule = SCHEDULES["vp"]()
    den = data.eight_gaussians_mixture().denoiser(schedule)
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x.requires_grad_(True)
    out = den(x, 0.2)
    exact = divergence.exact(out, x)
    for kind in ["rademacher", "gaussian"]:
        probes = divergence.draw_probes(x, 4000, kind, torch.Generator().manual_seed(3))
        per_probe = torch.stack([divergence.hutchinson(out, x, v[None]) for v in probes])
        se = per_probe.std(0) / math.sqrt(len(probes))
        assert torch.all((per_probe.mean(0) - exact).abs() < 5 * se + 1e-12)


def test_non_finite_input_is_refused():
    den = gaussian_data().denoiser(SCHEDULES["vp"]())
    with pytest.raises(ValueError, match="NaN"):
        log_likelihood(den, torch.tensor([[float("nan"), 0.0]], dtype=torch.float64))
