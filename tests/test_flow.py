"""Flow matching (rectified flow): the straight path as one more (alpha, sigma) schedule, the
velocity target, SD3's logit-normal times, and a model trained from configs/toy_2d_flow.toml.
(Every schedule-generic test also runs on it: tests/conftest.py SCHEDULES, the samplers'
orders and noise floors, the closed-form Gaussian likelihood.)"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import rediff
from rediff import data, metrics, schedules
from rediff.losses import MODE_SCALE, sample_times
from rediff.training import build_model, load_config, train

F64 = torch.float64


def test_probability_flow_drift_is_the_marginal_velocity():
    """For x_t = (1 - t) x0 + t eps the probability-flow ODE dx/dt = f x - g^2 / 2 score is
    the marginal velocity E[eps - x0 | x_t] (Liu et al. 2023): the schedule's SDE
    coefficients against the velocity target of the exact mixture denoiser."""
    schedule = schedules.FlowMatching()
    mix = data.GaussianMixture(
        torch.tensor([[-1.0, 0.5], [2.0, -1.0]], dtype=F64),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.5, 0.0], [0.0, 0.1]]], dtype=F64),
        torch.tensor([0.3, 0.7], dtype=F64),
    )
    denoiser = mix.denoiser(schedule)
    g = torch.Generator().manual_seed(0)
    for t in (0.01, 0.3, 0.7, 0.99):
        x = torch.randn(64, 2, generator=g, dtype=F64) * 1.5
        prediction = denoiser.predict(x, torch.full((64,), t, dtype=F64))
        drift = schedule.drift(x, t) - 0.5 * schedule.diffusion_squared(t) * prediction.score
        velocity = prediction.as_target("velocity")
        torch.testing.assert_close(drift, velocity, rtol=1e-10, atol=1e-10)
        # and the velocity is (x_t - x0_hat) / t, the straight line's slope
        torch.testing.assert_close(velocity, (x - prediction.x0) / t, rtol=1e-10, atol=1e-10)


def test_logit_normal_times_have_a_standard_normal_logit():
    n = 40000
    t = sample_times(
        schedules.FlowMatching(), n, "logit_normal", generator=torch.Generator().manual_seed(0)
    )
    logit = torch.log(t) - torch.log1p(-t)
    assert abs(float(logit.mean())) < 4 / math.sqrt(n)
    assert abs(float(logit.std()) - 1.0) < 4 / math.sqrt(2 * n)


def test_mode_times_follow_their_inverse_cdf():
    """t = f(u) with f decreasing from 1 to 0, so P(t <= f(u)) = 1 - u (SD3, eq. 20)."""
    n = 40000
    schedule = schedules.FlowMatching(t_min=1e-6, t_max=1 - 1e-6)
    t = sample_times(schedule, n, "mode", generator=torch.Generator().manual_seed(0))
    for u in (0.1, 0.3, 0.5, 0.7, 0.9):
        f = 1 - u - MODE_SCALE * (math.cos(0.5 * math.pi * u) ** 2 - 1 + u)
        p = 1 - u
        assert abs(float((t <= f).double().mean()) - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_flow_matching_refuses_a_time_range_beyond_pure_noise():
    with pytest.raises(ValueError, match="t_max <= 1"):
        schedules.FlowMatching(t_max=1.5)
    assert schedules.FlowMatching(t_max=1.0).reaches_pure_noise
    assert not schedules.FlowMatching().reaches_pure_noise


def test_a_2d_flow_model_learns_the_moons(tmp_path):
    """800 steps of configs/toy_2d_flow.toml at a small size: DPM-Solver++(2M) samples at 20
    steps reach sliced Wasserstein < 0.15 and a third of the untrained model's."""
    small = [
        "data.n=4000",
        "model.width=64",
        "model.depth=2",
        "train.batch_size=128",
        "train.warmup=20",
        "train.log_every=10",
        "train.checkpoint_every=1000",
        "train.ema_half_life=2000",
        "train.steps=800",
    ]
    config = load_config("configs/toy_2d_flow.toml", small)
    model = train(config, tmp_path / "run", progress=False)
    gen = torch.Generator().manual_seed(0)
    out = rediff.sample(
        model, (2000, 2), sampler="dpm++2m", steps=20, generator=gen, progress=False
    )
    target = data.two_moons(2000, generator=gen)
    before = rediff.sample(
        build_model(config, (2,)), (2000, 2), steps=20, generator=gen, progress=False
    )
    sw_after = metrics.sliced_wasserstein(out.x, target, generator=gen)
    sw_before = metrics.sliced_wasserstein(before.x, target, generator=gen)
    assert sw_after < 0.15 and sw_after < sw_before / 3, (sw_after, sw_before)


def test_sd3_shift_moves_a_flow_grid_as_its_formula_says():
    """grids.make(..., shift=s) lowers every log-SNR by 2 log s, which on the flow path is
    SD3's t' = s t / (1 + (s - 1) t) (Esser et al. 2024, eq. 23); pure noise and data stay."""
    from rediff import grids

    schedule = schedules.FlowMatching(t_min=1e-4, t_max=1.0)
    for s in (0.5, 3.0):
        t = grids.make(schedule, 10, "uniform", t_min=1e-3)[:-1]
        ts = grids.make(schedule, 10, "uniform", t_min=1e-3, shift=s)
        torch.testing.assert_close(ts[:-1], s * t / (1 + (s - 1) * t), rtol=1e-12, atol=0)
        assert float(ts[0]) == 1.0 and float(ts[-1]) == 0.0
    # log-SNR grids need a finite noise level: they start at finite_t_max
    assert float(grids.make(schedule, 10)[0]) == schedule.finite_t_max < 1.0
    with pytest.raises(ValueError, match="outside the schedule's"):
        grids.make(schedules.FlowMatching(), 10, "uniform", shift=3.0)
    with pytest.raises(ValueError, match="finite noise level at t_max"):
        grids.make(schedule, 10, "logsnr", t_max=1.0)


def _gaussian_from_pure_noise():
    """Gaussian data N(m, diag c) under flow matching with t_max = 1, its exact denoiser, and
    the probability-flow map from pure noise to data, x0 = m + sqrt(c) x1 (the marginal
    covariances (1 - t)^2 c + t^2 commute, so the flow map is their square-root ratio)."""
    m, c = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.25, 2.0], dtype=F64)
    mix = data.GaussianMixture(m[None], torch.diag(c)[None], torch.ones(1, dtype=F64))
    schedule = schedules.FlowMatching(t_min=1e-6, t_max=1.0)
    return mix.denoiser(schedule), lambda x1: m + c.sqrt() * x1


def test_euler_from_pure_noise_is_first_order_to_the_exact_flow():
    from rediff import grids, samplers

    denoiser, flow = _gaussian_from_pure_noise()
    x1 = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    errors = []
    for steps in (16, 32, 64):
        ts = grids.make(denoiser.schedule, steps, "uniform")
        assert float(ts[0]) == 1.0
        errors.append(float((samplers.euler(denoiser, x1, ts) - flow(x1)).abs().max()))
    orders = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    assert all(0.8 < order < 1.2 for order in orders), (errors, orders)
    # the step from pure noise is x1 + (t - 1) v, with the exact v(x, 1) = x - m
    ts = torch.tensor([1.0, 0.5, 0.0], dtype=F64)
    first = []
    samplers.euler(denoiser, x1, ts, callback=lambda step: first.append(step.x))
    m = flow(torch.zeros(2, dtype=F64))
    torch.testing.assert_close(first[0], x1 - 0.5 * (x1 - m), rtol=1e-12, atol=1e-12)


def test_ddpm_from_pure_noise_draws_the_data_distribution():
    from rediff import grids, samplers

    denoiser, flow = _gaussian_from_pure_noise()
    n = 20000
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(n, 2, generator=g, dtype=F64)
    x = samplers.ddpm(denoiser, x1, grids.make(denoiser.schedule, 50, "uniform"), generator=g)
    exact = flow(torch.randn(n, 2, generator=g, dtype=F64))
    se_mean = exact.std(0) / math.sqrt(n)
    assert bool(((x.mean(0) - exact.mean(0)).abs() < 4 * math.sqrt(2) * se_mean).all())
    se_var = exact.var(0) * math.sqrt(2 / n)
    assert bool(((x.var(0) - exact.var(0)).abs() < 4 * math.sqrt(2) * se_var).all())


def test_samplers_that_cannot_step_from_pure_noise_say_so():
    from rediff import samplers

    denoiser, _ = _gaussian_from_pure_noise()
    x = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="pure noise"):
        samplers.dpm_solver_pp(denoiser, x, torch.tensor([1.0, 0.5, 0.0], dtype=F64))
    # rediff.sample's default (dpm++2m on log-SNR) starts at finite_t_max instead
    drawn = rediff.sample(denoiser, (4, 2), steps=4, dtype=F64, progress=False)
    assert float(drawn.ts[0]) == denoiser.schedule.finite_t_max


def test_path_and_velocity_equal_meta_flow_matching_reversed_in_time():
    """Meta's flow_matching (CondOTProbPath) writes the same straight path with time reversed:
    its x_t = t x1 + (1 - t) x0 with x1 the data and x0 the noise is rediff's x at 1 - t,
    and its target dx_t = x1 - x0 is minus rediff's velocity eps - x0."""
    from flow_matching.path import CondOTProbPath

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(64, 3, generator=g, dtype=F64), torch.randn(64, 3, generator=g, dtype=F64)
    u = torch.rand(64, generator=g, dtype=F64)
    theirs = CondOTProbPath().sample(x_0=eps, x_1=x0, t=u)
    schedule, t = schedules.FlowMatching(t_max=1.0), 1.0 - u
    ours = schedule.alpha(t)[:, None] * x0 + schedule.sigma(t)[:, None] * eps
    torch.testing.assert_close(ours, theirs.x_t, rtol=1e-12, atol=1e-12)
    velocity = rediff.convert(x0, ours, schedule.alpha(t), schedule.sigma(t), "x0", "velocity")
    torch.testing.assert_close(velocity, -theirs.dx_t, rtol=1e-10, atol=1e-10)


def test_euler_equals_meta_flow_matching_ode_solver_on_the_exact_velocity():
    """flow_matching's ODESolver (Euler on the given time grid, torchdiffeq) on the exact
    mixture's velocity field, its time reversed, equals rediff's Euler from pure noise."""
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    from rediff import grids, samplers

    mix = data.GaussianMixture(
        torch.tensor([[-1.0, 0.5], [2.0, -1.0]], dtype=F64),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.5, 0.0], [0.0, 0.1]]], dtype=F64),
        torch.tensor([0.3, 0.7], dtype=F64),
    )
    denoiser = mix.denoiser(schedules.FlowMatching(t_min=1e-4, t_max=1.0))

    class Velocity(ModelWrapper):  # flow_matching's time u = 1 - t, its velocity = -ours
        def forward(self, x, t, **extras):
            time = torch.full((x.shape[0],), 1.0 - float(t), dtype=F64)
            return -denoiser.predict(x, time).as_target("velocity")

    ts = grids.make(denoiser.schedule, 12, "uniform")
    x1 = torch.randn(128, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    theirs = ODESolver(Velocity(None)).sample(x1, None, "euler", time_grid=1.0 - ts)
    ours = samplers.euler(denoiser, x1, ts)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
