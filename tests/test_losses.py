"""Denoising objectives: their minimisers, weightings and time samplers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import gaussian_data
from torch import nn

import rediff
from rediff import losses, schedules

F64 = torch.float64


class Linear(nn.Module):
    """An affine map of x that ignores time: at one fixed t the exact denoiser of Gaussian data
    is affine, so this model can represent it exactly."""

    def __init__(self, dim):
        super().__init__()
        self.layer = nn.Linear(dim, dim, dtype=F64)

    def forward(self, x, time):
        return self.layer(x)


@pytest.mark.parametrize("target", ["eps", "x0", "v", "score", "edm"])
def test_minimiser_of_each_target_loss_is_the_exact_denoiser(target):
    sched = schedules.LinearVP()
    t = float(sched.t_from_noise_level(0.7))
    gen = torch.Generator().manual_seed(0)
    n = 40000
    x0 = gaussian_data().sample(n, generator=gen, dtype=F64)
    noise = torch.randn(n, 2, generator=gen, dtype=F64)
    times = torch.full((n,), t, dtype=F64)
    model = rediff.DiffusionModel(Linear(2), sched, target=target)
    optimizer = torch.optim.LBFGS(
        model.parameters(),
        max_iter=200,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = losses.denoising_loss(model, x0, t=times, noise=noise)
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    probe = sched.marginal(gaussian_data().sample(500, generator=gen, dtype=F64), t, generator=gen)
    exact = gaussian_data().denoiser(sched)(probe, t)
    with torch.no_grad():
        error = (model(probe, t) - exact).norm(dim=1).mean()
    assert float(error) < 0.02, target


def fixed_batch():
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(64, 2, generator=gen, dtype=F64)
    noise = torch.randn(64, 2, generator=gen, dtype=F64)
    return x0, noise


@pytest.mark.parametrize("target", ["eps", "x0", "v", "edm"])
def test_weightings_are_one_family(target):
    """Every weighting is w(t) |x0_hat - x0|^2; 'simple' is the MSE on the model's own output."""
    torch.manual_seed(0)
    sched = schedules.LinearVP()
    model = rediff.DiffusionModel(Linear(2), sched, target=target)
    x0, noise = fixed_batch()
    t = torch.linspace(0.05, 0.95, 64, dtype=F64)
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    with torch.no_grad():
        x_t = sched.marginal(x0, t, noise)
        err = (model(x_t, t) - x0).square().mean(dim=1)
        direct = (
            (model.target_prediction(x_t, t) - rediff.convert(x0, x_t, alpha, sigma, "x0", target))
            .square()
            .mean(dim=1)
            .mean()
        )
        weights = {
            "simple": None,
            "snr": (alpha / sigma) ** 2,
            "x0": torch.ones_like(t),
            "likelihood": sched.diffusion_squared(t) * alpha**2 / sigma**4,
        }
        for name, w in weights.items():
            loss = losses.denoising_loss(model, x0, t=t, noise=noise, weighting=name)
            expected = direct if w is None else (w * err).mean()
            torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-12)
    # eps-MSE = SNR weighting; EDM's weighting = MSE on EDM's F
    if target == "eps":
        a = losses.denoising_loss(model, x0, t=t, noise=noise, weighting="simple")
        b = losses.denoising_loss(model, x0, t=t, noise=noise, weighting="snr")
        torch.testing.assert_close(a, b)
    if target == "edm":
        a = losses.denoising_loss(model, x0, t=t, noise=noise, weighting="simple")
        b = losses.denoising_loss(model, x0, t=t, noise=noise, weighting="edm")
        torch.testing.assert_close(a, b)


def test_time_samplers():
    gen = torch.Generator().manual_seed(2)
    ddpm = schedules.DiscreteVP.linear(1000)
    k = losses.sample_times(ddpm, 5000, "steps", generator=gen) * 1000
    assert torch.equal(k, k.round()) and k.min() >= 1 and k.max() <= 1000
    vp = schedules.LinearVP()
    u = losses.sample_times(vp, 5000, "uniform", generator=gen)
    assert u.min() >= vp.t_min and u.max() <= vp.t_max and abs(float(u.mean()) - 0.5) < 0.02
    edm = schedules.EDM()
    log_level = torch.log(
        edm.noise_level(losses.sample_times(edm, 20000, "lognormal", generator=gen))
    )
    assert abs(float(log_level.mean()) + 1.2) < 0.03 and abs(float(log_level.std()) - 1.2) < 0.03


def test_bad_loss_input_is_refused():
    model = rediff.DiffusionModel(Linear(2), schedules.VE(), target="eps")
    x0 = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="needs a DiscreteVP"):
        losses.denoising_loss(model, x0, time_sampler="steps")
    with pytest.raises(ValueError, match="unknown weighting 'p2'"):
        losses.denoising_loss(model, x0, weighting="p2")
    with pytest.raises(ValueError, match="NaN"):
        losses.denoising_loss(model, torch.full((4, 2), math.nan, dtype=F64))
    with pytest.raises(ValueError, match="outside"):
        losses.denoising_loss(model, x0, t=torch.zeros(4, dtype=F64))
