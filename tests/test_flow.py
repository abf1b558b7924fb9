"""Flow matching (rectified flow): the straight path as one more (alpha, sigma) schedule, the
velocity target, SD3's logit-normal times, and a model trained from configs/toy_2d_flow.toml.
(Every schedule-generic test also runs on it: tests/conftest.py SCHEDULES, the samplers'
orders and noise floors, the closed-form Gaussian likelihood.)"""

from __future__ import annotations

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


def test_flow_matching_refuses_a_time_range_reaching_pure_noise():
    with pytest.raises(ValueError, match="t_max < 1"):
        schedules.FlowMatching(t_max=1.0)


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
