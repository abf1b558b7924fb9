"""Exponential moving average of parameters with a half-life in samples.

theta_ema <- beta theta_ema + (1 - beta) theta, with beta = 0.5^(batch / half_life) per step,
so the average forgets half its weight every ``half_life`` training samples whatever the
batch size (Karras et al. 2022, appendix F: EMA half-life in images).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps a frozen copy of ``model`` whose parameters are the moving average."""

    def __init__(self, model: nn.Module, half_life: float):
        if not half_life > 0:
            raise ValueError(f"EMA half-life (in samples) must be positive, got {half_life}")
        self.half_life = float(half_life)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay(self, batch_size: int) -> float:
        """beta for one step of ``batch_size`` samples."""
        return 0.5 ** (batch_size / self.half_life)

    @torch.no_grad()
    def update(self, model: nn.Module, batch_size: int) -> None:
        beta = self.decay(batch_size)
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - beta)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
