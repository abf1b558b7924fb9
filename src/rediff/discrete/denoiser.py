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
from rediff.discrete.process import PerCoordinate
from rediff.model import NULL_LABEL


class DiscreteDenoiser(ABC):
    """logits of p(x0 | x_t) = D(x_t, t, **cond); ``process`` is the forward process."""

    process: PerCoordinate

    @abstractmethod
    def __call__(self, x_t: Tensor, t: int | Tensor, **cond: Any) -> Tensor:
        """Logits [B, *D, K] for x_t: [B, *D] states and t: int or [B] steps."""


class DiscreteModel(nn.Module, DiscreteDenoiser):
    """Any network ``net(x_t, time, **cond) -> logits [B, *D, K]`` as a DiscreteDenoiser.

    The net receives x_t itself (integers in the process's states, [MASK] included) and
    ``time`` in [0, 1] as float32 (``process.time_input``: t / T for a DiscreteProcess, t
    itself for a MaskedProcess), the same time input continuous nets get (``TimeEmbedding``
    with ``time_scale`` 1000); how it reads the states is the net's business (an image net
    takes levels as values, a transformer embeds tokens: ``rediff.nets``). For a process that
    ``carries_over`` (masked diffusion; MDLM's SUBS parameterisation) the unmasked tokens are
    copied: their logits are 0 at x_t and -inf elsewhere, whatever the net says.
    """

    def __init__(self, net: nn.Module, process: PerCoordinate) -> None:
        super().__init__()
        if not isinstance(process, PerCoordinate):
            raise TypeError(
                f"process must be a DiscreteProcess or MaskedProcess, got {type(process).__name__}"
            )
        self.net, self.process = net, process

    def with_net(self, net: nn.Module) -> DiscreteModel:
        """The same model around another module holding these parameters (compiled, DDP)."""
        return DiscreteModel(net, self.process)

    def forward(self, x_t: Tensor, t: int | Tensor, **cond: Any) -> Tensor:
        B = x_t.shape[0]
        if (
            x_t.is_floating_point()
            or int(x_t.min()) < 0
            or int(x_t.max()) >= self.process.num_states
        ):
            raise ValueError(
                f"x_t must hold the process's states 0..{self.process.num_states - 1} as integers"
            )
        times = torch.as_tensor(t, device=x_t.device)
        times = times.expand(B) if times.ndim == 0 else times
        logits = self.net(x_t.long(), self.process.time_input(times), **cond)
        expected = (*x_t.shape, self.process.categories)
        if tuple(logits.shape) != expected:
            raise ValueError(
                f"the net returned logits {list(logits.shape)}, expected {list(expected)}"
            )
        return carry_over(logits, x_t, self.process) if self.process.carries_over else logits


def carry_over(logits: Tensor, x_t: Tensor, process) -> Tensor:
    """``logits`` [B, *D, K] with every unmasked position of x_t copied: 0 at its token and
    -inf elsewhere (so p(x0_i | x_t) is the point mass at x_t,i)."""
    unmasked = (x_t != process.mask)[..., None]
    copied = torch.full_like(logits, -torch.inf)
    index = x_t.long().clamp(max=process.categories - 1)[..., None]
    copied = copied.scatter(-1, index, 0.0)
    return torch.where(unmasked, copied, logits)


class ClassifierFree(DiscreteDenoiser):
    """Classifier-free guidance of a discrete denoiser trained with label dropout, on log
    probabilities (Ho & Salimans 2022 with w + 1 -> scale; for discrete diffusion as in
    Nisonoff et al. 2024 and Schiff et al. 2024):

        log p_w(x0_i | x_t) = log p_u + scale (log p_c - log p_u) + const,

    p_c = p(x0_i | x_t, labels), p_u = p(x0_i | x_t, NULL_LABEL), from one batched call
    (``labels`` [B] given at each call, so a sampler may evaluate some samples only); the
    softmax of the result renormalises it. Scale 0 is the unconditional model, 1 the
    conditional one (both exactly), > 1 sharpens towards the class."""

    def __init__(self, denoiser: DiscreteDenoiser, scale: float) -> None:
        self.denoiser, self.process, self.scale = denoiser, denoiser.process, float(scale)

    def __call__(self, x_t: Tensor, t: float | Tensor, *, labels: Tensor) -> Tensor:
        B = x_t.shape[0]
        labels = torch.as_tensor(labels, device=x_t.device).long().expand(B)
        times = torch.as_tensor(t, device=x_t.device)
        times = times.expand(B) if times.ndim == 0 else times
        both = self.denoiser(
            torch.cat([x_t, x_t]),
            torch.cat([times, times]),
            labels=torch.cat([labels, torch.full_like(labels, NULL_LABEL)]),
        )
        conditional, unconditional = torch.log_softmax(both.to(torch.float64), dim=-1).chunk(2)
        # where both are -inf (a carried-over token's other values) the result stays -inf
        same = conditional == unconditional
        return torch.where(same, conditional, torch.lerp(unconditional, conditional, self.scale))
