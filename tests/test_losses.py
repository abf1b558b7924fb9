"""Denoising objectives: their minimisers, weightings and time samplers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import gaussian_data
from torch import nn

import rediff
from rediff import divergence, losses, schedules
from rediff.model import DiffusionModel

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


class _Linear(torch.nn.Module):
    """s(x) = A x + b, ignoring time: a linear score model."""

    def __init__(self, A, b):
        super().__init__()
        self.A, self.b = torch.nn.Parameter(A.clone()), torch.nn.Parameter(b.clone())

    def forward(self, x, time):
        return x @ self.A.T + self.b


def _linear_score_model(A, b):
    sched = schedules.VE(0.01, 10.0)
    return DiffusionModel(_Linear(A, b), sched, target="score")


def test_sliced_and_exact_score_matching_agree_in_expectation():
    """On a linear score model tr(ds/dx) = tr(A) at every x, so exact score matching is
    sigma^2 (tr A + |Ax + b|^2 / 2) / d; sliced score matching averages v^T A v over probes,
    whose mean is tr A, for Rademacher and Gaussian probes alike."""
    gen = torch.Generator().manual_seed(0)
    A = torch.tensor([[-2.0, 0.7, 0.1], [0.3, -1.0, 0.4], [0.0, 0.5, -3.0]], dtype=torch.float64)
    b = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    model = _linear_score_model(A, b)
    x0 = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    t = torch.full((64,), 0.5, dtype=torch.float64)
    noise = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    exact = losses.score_matching_loss(model, x0, t, noise)
    x_t = model.schedule.marginal(x0, t, noise)
    sigma2 = float(model.schedule.sigma(0.5)) ** 2
    closed = sigma2 * (A.trace() + 0.5 * (x_t @ A.T + b).square().sum(1)).mean() / 3
    assert torch.allclose(exact, closed, rtol=1e-10)
    exact_grad = torch.autograd.grad(exact, model.net.A)[0]
    for probe in ["rademacher", "gaussian"]:
        values, grads = [], []
        for _ in range(400):
            probes = divergence.draw_probes(x0, 1, probe, gen)
            sliced = losses.score_matching_loss(model, x0, t, noise, probes)
            values.append(float(sliced.detach()))
            grads.append(torch.autograd.grad(sliced, model.net.A)[0])
        values = torch.tensor(values, dtype=torch.float64)
        se = float(values.std() / math.sqrt(len(values)))
        assert abs(float(values.mean()) - float(exact.detach())) < 5 * se
        grads = torch.stack(grads)
        grad_se = grads.std(0) / math.sqrt(len(grads))
        assert torch.all((grads.mean(0) - exact_grad).abs() < 5 * grad_se + 1e-12)


def test_score_matching_minimiser_is_the_noised_score():
    """Sliced score matching on N(m, C) noised to sigma: the linear model's optimum is the
    score of N(m, C + sigma^2 I), A = -(C + sigma^2 I)^-1, b = -A m (VE: alpha = 1)."""
    gen = torch.Generator().manual_seed(3)
    m = torch.tensor([1.0, -0.5], dtype=torch.float64)
    C = torch.tensor([[0.6, 0.25], [0.25, 0.4]], dtype=torch.float64)
    L = torch.linalg.cholesky(C)
    model = _linear_score_model(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2))
    model.double()
    objective = losses.Objective("sliced_sm", probes=2)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    t_fixed = 0.3
    for step in range(600):
        x0 = m + torch.randn(512, 2, generator=gen, dtype=torch.float64) @ L.T
        draws = objective.draw(model.schedule, x0, gen)
        draws["t"] = torch.full((512,), t_fixed, dtype=torch.float64)
        for group in opt.param_groups:
            group["lr"] = 0.05 if step < 400 else 0.005
        loss = objective(model, x0, draws)
        opt.zero_grad()
        loss.backward()
        opt.step()
    s2 = float(model.schedule.sigma(t_fixed)) ** 2
    A_true = -torch.linalg.inv(C + s2 * torch.eye(2, dtype=torch.float64))
    assert torch.allclose(model.net.A.detach(), A_true, atol=0.05 * A_true.abs().max())
    assert torch.allclose(model.net.b.detach(), -A_true @ m, atol=0.05 * (A_true @ m).abs().max())
