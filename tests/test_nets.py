"""Networks: shapes, the DDPM CIFAR-10 size, conditioning, energy-parameterised scores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rediff
from rediff import schedules
from rediff.nets import MLP, EnergyScore, UNet, accelerate, sinusoidal


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_cifar10_preset_is_ddpm_size():
    """Ho et al. (2020), appendix B: the CIFAR-10 model has 35.7M parameters."""
    assert n_params(UNet.cifar10()) == pytest.approx(35.7e6, rel=0.005)


def test_unet_and_mlp_keep_shapes():
    torch.manual_seed(0)
    unet = UNet.digits()
    x = torch.randn(3, 1, 8, 8)
    assert unet(x, torch.tensor([0.0, 10.0, 999.0])).shape == x.shape
    mlp = MLP(64, width=32, depth=2)
    assert mlp(x, torch.rand(3)).shape == x.shape
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        unet(torch.randn(3, 1, 16, 16), torch.zeros(3))
    with pytest.raises(ValueError, match="dimension 64"):
        mlp(torch.randn(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="not divisible"):
        UNet(resolution=30, ch_mult=(1, 2, 2))


def test_sinusoidal_features():
    emb = sinusoidal(torch.tensor([0.0, 1.0]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert float(emb[1, 0]) == pytest.approx(torch.sin(torch.tensor(1.0)).item())


def test_class_conditioning_with_null_label():
    torch.manual_seed(0)
    net = MLP(2, width=32, depth=2, num_classes=3)
    x, t = torch.randn(4, 2), torch.rand(4)
    a = net(x, t, labels=torch.tensor([0, 1, 2, 0]))
    b = net(x, t, labels=torch.tensor([1, 1, 2, 0]))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1:], b[1:])
    null = net(x, t, labels=torch.full((4,), -1))
    torch.testing.assert_close(net(x, t), null)  # no labels = the null label
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        net(x, t, labels=torch.tensor([0, 1, 5, 0]))
    with pytest.raises(ValueError, match="without num_classes"):
        MLP(2, width=8, depth=1)(x, t, labels=torch.zeros(4, dtype=torch.long))


class Quadratic(nn.Module):
    """E(x) = ||x||^2 / (2 v): the energy of N(0, v I)."""

    def __init__(self, v):
        super().__init__()
        self.log_v = nn.Parameter(torch.tensor(float(v)).log())

    def forward(self, x, time):
        return x.square().sum(dim=1) / (2 * self.log_v.exp())


def test_energy_score_is_minus_gradient():
    net = EnergyScore(Quadratic(2.0))
    x = torch.randn(5, 3)
    with torch.no_grad():  # sampling: autograd is still used for the score
        torch.testing.assert_close(net(x, torch.zeros(5)), -x / 2.0)
    torch.testing.assert_close(net.energy(x, torch.zeros(5)), x.square().sum(1) / 4.0)
    net.train()
    loss = net(x, torch.zeros(5)).square().sum()
    loss.backward()  # the score's graph reaches the energy's parameters
    assert net.energy_net.log_v.grad is not None


def test_energy_model_samples_as_a_denoiser():
    """For data N(0, v0 I) under VE noise, p_t = N(0, (v0 + sigma^2) I): an energy model with
    the matching variance gives the exact denoiser x0_hat = v0 x / (v0 + sigma^2)."""

    class Matched(nn.Module):
        def forward(self, x, time):  # time is the noise level t for EDM
            return x.square().sum(dim=1) / (2 * (1.0 + time**2))

    sched = schedules.EDM()
    model = rediff.DiffusionModel(EnergyScore(Matched()), sched, target="score")
    x, t = torch.randn(4, 2), torch.full((4,), 3.0)
    torch.testing.assert_close(model(x, t), x / 10.0)
    out = rediff.sample(model, (256, 2), sampler="heun", steps=10, progress=False)
    assert torch.isfinite(out.x).all()


def test_accelerate_shares_parameters_and_keeps_the_function():
    """Channels-last computes the same function on the same parameters; bf16 autocast agrees
    to bfloat16's precision and hands back the input's dtype; nothing asked: the net itself."""
    torch.manual_seed(0)
    reference = UNet.digits(num_classes=10)
    net = UNet.digits(num_classes=10)
    net.load_state_dict(reference.state_dict())
    x, time, labels = torch.randn(4, 1, 8, 8), torch.tensor([1.0, 50, 400, 999]), torch.arange(4)
    expected = reference(x, time, labels=labels)
    assert accelerate(net) is net
    fast = accelerate(net, channels_last=True)
    assert {id(p) for p in fast.parameters()} == {id(p) for p in net.parameters()}
    assert net.state_dict().keys() == reference.state_dict().keys()
    torch.testing.assert_close(fast(x, time, labels=labels), expected, rtol=1e-5, atol=1e-5)
    loss = fast(x, time, labels=labels).square().mean()
    loss.backward()
    reference(x, time, labels=labels).square().mean().backward()
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    half = accelerate(net, precision="bf16")
    out = half(x, time, labels=labels)
    assert out.dtype == torch.float32
    assert (out - expected).abs().max() < 0.05 * expected.abs().max()
    assert not torch.equal(out, expected)  # bf16 really ran
    with pytest.raises(
        ValueError, match=r"unknown precision 'fp8'; valid precisions: 'fp32', 'bf16'"
    ):
        accelerate(net, precision="fp8")
