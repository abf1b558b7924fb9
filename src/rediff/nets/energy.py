"""Energy-parameterised scores: score(x, t) = -grad_x E(x, t) (Salimans & Ho 2021; Du &
Mordatch 2019), so the model also gives an unnormalised log-density -E."""

from __future__ import annotations

import torch
from torch import nn

from rediff._tensor import Tensor


class EnergyScore(nn.Module):
    """Wrap ``energy(x, time, **cond) -> [B]`` (or [B, *S], summed per sample) into a network
    that returns the score -grad_x E; use it with ``DiffusionModel(..., target="score")``.

    The gradient is taken with autograd even under ``torch.no_grad`` (sampling), and kept in
    the graph while training (``create_graph``), so the loss trains E.
    """

    def __init__(self, energy: nn.Module):
        super().__init__()
        self.energy_net = energy

    def energy(self, x: Tensor, time: Tensor, **cond) -> Tensor:
        """E(x, t) per sample: [B]; -E is the unnormalised log-density of the noised data."""
        e = self.energy_net(x, time, **cond)
        return e.reshape(e.shape[0], -1).sum(dim=1)

    def forward(self, x: Tensor, time: Tensor, **cond) -> Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True) if not x.requires_grad else x
            e = self.energy(x, time, **cond).sum()
            (grad,) = torch.autograd.grad(e, x, create_graph=self.training)
        return -grad
