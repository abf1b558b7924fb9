"""The discrete denoiser: (x_t, t) -> logits of p(x0 | x_t) for every coordinate.

A ``DiscreteDenoiser`` maps x_t, integers [B, *D] in the process's S states, and integer
steps t (an int or [B]) to logits [B, *D, K] over the K data values. The exact oracle
(``MixtureDenoiser``) and a trained network (``DiscreteModel``) are interchangeable: the
bound, the samplers and the likelihood consume DiscreteDenoisers only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from rediff._tensor import Tensor
from rediff.discrete.process import DiscreteProcess


class DiscreteDenoiser(ABC):
    """logits of p(x0 | x_t) = D(x_t, t, **cond); ``process`` is the forward process."""

    process: DiscreteProcess

    @abstractmethod
    def __call__(self, x_t: Tensor, t: int | Tensor, **cond: Any) -> Tensor:
        """Logits [B, *D, K] for x_t: [B, *D] states and t: int or [B] steps."""


class DiscreteModel(nn.Module, DiscreteDenoiser):
    """Any network ``net(x_t, time, **cond) -> logits [B, *D, K]`` as a DiscreteDenoiser.

    The net receives x_t itself (integers in the process's states, [MASK] included) and
    ``time`` = t / T in float32, the same time input continuous nets get (``TimeEmbedding``
    with ``time_scale`` 1000); how it reads the states is the net's business (an image net
    takes levels as values, a transformer embeds tokens: ``rediff.nets``).
    """

    def __init__(self, net: nn.Module, process: DiscreteProcess) -> None:
        super().__init__()
        if not isinstance(process, DiscreteProcess):
            raise TypeError(f"process must be a DiscreteProcess, got {type(process).__name__}")
        self.net, self.process = net, process

    def with_net(self, net: nn.Module) -> DiscreteModel:
        """The same model around another module holding these parameters (compiled, DDP)."""
        return DiscreteModel(net, self.process)

    def forward(self, x_t: Tensor, t: int | Tensor, **cond: Any) -> Tensor:
        B, T = x_t.shape[0], self.process.num_steps
        if (
            x_t.is_floating_point()
            or int(x_t.min()) < 0
            or int(x_t.max()) >= self.process.num_states
        ):
            raise ValueError(
                f"x_t must hold the process's states 0..{self.process.num_states - 1} as integers"
            )
        steps = torch.as_tensor(t, device=x_t.device)
        steps = steps.expand(B) if steps.ndim == 0 else steps
        logits = self.net(x_t.long(), steps.float() / T, **cond)
        expected = (*x_t.shape, self.process.categories)
        if tuple(logits.shape) != expected:
            raise ValueError(
                f"the net returned logits {list(logits.shape)}, expected {list(expected)}"
            )
        return logits
