"""DiffusionModel: any network becomes a Denoiser, for every target and time input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SCHEDULES, interior_times, target_definitions
from torch import nn

import rediff
from rediff import DiffusionModel, Target
from rediff.schedules import VE, DiscreteVP

F64 = torch.float64


class Replay(nn.Module):
    """A 'network' that records what it was given and returns a fixed prediction."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output
        self.scale = nn.Parameter(torch.ones((), dtype=output.dtype))
        self.seen: tuple | None = None

    def forward(self, x, time, **cond):
        self.seen = (x, time, cond)
        return self.scale * self.output


@pytest.mark.parametrize("target", list(Target), ids=str)
def test_exact_prediction_gives_exact_x0_for_every_schedule(schedule, target):
    gen = torch.Generator().manual_seed(5)
    t = interior_times(schedule, n=6)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    x0 = torch.randn(6, 4, generator=gen, dtype=F64)
    eps = torch.randn(6, 4, generator=gen, dtype=F64)
    x_t = alpha[:, None] * x0 + sigma[:, None] * eps
    net = Replay(target_definitions(x0, eps, x_t, alpha, sigma, 0.5)[target])
    model = DiffusionModel(net, schedule, target=target, sigma_data=0.5)
    x0_hat = model(x_t, t)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-9, atol=1e-9)
    # the network saw x_t itself, or EDM's c_in-scaled input 1/sqrt(sigma^2 + alpha^2 sd^2)
    expected_in = x_t
    if target is Target.EDM:
        expected_in = x_t / torch.sqrt(sigma**2 + alpha**2 * 0.25)[:, None]
    torch.testing.assert_close(net.seen[0], expected_in)
    pred = model.predict(x_t, t)
    torch.testing.assert_close(pred.eps, eps, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(pred.x0, x0_hat)


def test_time_inputs():
    sched = DiscreteVP.linear(1000)
    x = torch.zeros(3, 2)
    k = torch.tensor([1.0, 500.0, 1000.0], dtype=F64)
    t = k / 1000
    expected = {
        "t": t,
        "step": k - 1,  # DDPM code and diffusers index steps 0..T-1
        "c_noise": 0.25 * torch.log(sched.sigma(t) / sched.alpha(t)),
    }
    for name, value in expected.items():
        net = Replay(torch.zeros(3, 2))
        DiffusionModel(net, sched, time_input=name)(x, t)
        assert net.seen[1].dtype == torch.float32
        torch.testing.assert_close(net.seen[1], value.float())


def test_conditioning_and_scalar_time_reach_the_network():
    net = Replay(torch.zeros(2, 1, 8, 8))
    model = DiffusionModel(net, SCHEDULES["vp"](), target="eps")
    x = torch.randn(2, 1, 8, 8)
    out = model(x, 0.5, labels=torch.tensor([3, 4]))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert net.seen[2]["labels"].tolist() == [3, 4]
    torch.testing.assert_close(net.seen[1], torch.full((2,), 0.5))
    # eps = 0 means x0_hat = x_t / alpha
    torch.testing.assert_close(out, x / float(model.schedule.alpha(0.5)))


def test_model_is_a_trainable_module_and_a_denoiser():
    net = Replay(torch.ones(4, 2))
    model = DiffusionModel(net, SCHEDULES["ddpm-linear"](), target="v")
    assert isinstance(model, rediff.Denoiser) and isinstance(model, nn.Module)
    assert [n for n, _ in model.named_parameters()] == ["net.scale"]
    loss = model(torch.randn(4, 2), 0.3).square().mean()
    loss.backward()
    assert net.scale.grad is not None and math.isfinite(float(net.scale.grad))


def test_denoiser_is_abstract():
    with pytest.raises(TypeError):
        rediff.Denoiser()


def test_bad_model_arguments_are_refused():
    net = Replay(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="unknown prediction target 'noise'"):
        DiffusionModel(net, VE(), target="noise")
    with pytest.raises(ValueError, match=r"unknown time input 'sigma'.*'c_noise'"):
        DiffusionModel(net, VE(), time_input="sigma")
    with pytest.raises(ValueError, match="needs a DiscreteVP"):
        DiffusionModel(net, VE(), time_input="step")
    with pytest.raises(TypeError, match="Schedule"):
        DiffusionModel(net, "ddpm")
    with pytest.raises(ValueError, match="sigma_data"):
        DiffusionModel(net, VE(), target="edm", sigma_data=0.0)


def test_bad_call_arguments_are_refused():
    model = DiffusionModel(Replay(torch.zeros(2, 3)), VE())
    with pytest.raises(ValueError, match="shaped like its input"):
        model(torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match="outside"):
        model(torch.zeros(2, 3), 1.5)


def test_conditioned_binds_conditioning():
    net = Replay(torch.zeros(2, 2))
    model = DiffusionModel(net, VE())
    bound = rediff.Conditioned(model, labels=torch.tensor([1, 2]))
    assert bound.schedule is model.schedule
    bound(torch.zeros(2, 2), 0.5)
    assert net.seen[2]["labels"].tolist() == [1, 2]


@pytest.mark.parametrize("time_input", ["t", "step", "c_noise"])
@pytest.mark.parametrize("target", ["eps", "x0", "v", "score", "edm", "velocity"])
def test_one_time_for_the_batch_is_the_per_sample_path(target, time_input):
    """A Python float t, and a grid point through ``at`` (what samplers pass: coefficients as
    floats, no schedule evaluation), give what the same t as a per-sample tensor gives,
    learned variance included, also through the wrappers that pass ``at`` on."""
    from rediff.sampling import CountingDenoiser
    from rediff.transitions import points

    torch.manual_seed(0)
    schedule = DiscreteVP.linear(100)
    net = rediff.nets.MLP(3, 16, 2, outputs=2).double()
    model = DiffusionModel(net, schedule, target, time_input, learned_variance=True)
    x = torch.randn(5, 3, dtype=torch.float64)
    counting = CountingDenoiser(rediff.Conditioned(model))
    for point in points(schedule, torch.tensor([1.0, 0.37, 0.01], dtype=torch.float64)):
        fast = model(x, point.t)
        slow = model(x, torch.full((5,), point.t, dtype=torch.float64))
        torch.testing.assert_close(fast, slow)
        torch.testing.assert_close(fast, model.with_variance(x, point.t)[0])
        torch.testing.assert_close(counting.at(x, point), slow)
    assert counting.calls == 3
    with pytest.raises(ValueError, match="outside"):
        model(x, 1.5)
