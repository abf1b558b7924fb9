"""The GPU path on the same parameters: bf16 autocast, channels-last images, torch.compile.

``accelerate(net, precision=, channels_last=, compile=)`` returns a module that shares
``net``'s parameters, so a model's state dict, its EMA and its checkpoints are those of the
plain net; training (``train.precision``, ``train.channels_last``, ``train.compile``) and
sampling (``rediff sample --precision --channels-last --compile``) use the same helper. On
CPU the same code runs (bf16 autocast exists there too); compile is optional everywhere.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from rediff._choices import Choice
from rediff._tensor import Tensor


class Precision(Choice):
    """The network's arithmetic: float32, or bfloat16 autocast around it."""

    FP32 = "fp32"
    BF16 = "bf16"


class Accelerated(nn.Module):
    """``net`` evaluated under bf16 autocast and/or on channels-last images.

    Matrix products and convolutions run in bfloat16 under autocast (float32 accumulation),
    and the output is cast back to the input's dtype, so the sampler's or the loss's own
    arithmetic keeps its precision. Channels-last converts the net's 4-D weights once (in
    place: the parameters stay the net's) and each 4-D input, the layout tensor cores prefer.
    """

    def __init__(
        self,
        net: nn.Module,
        precision: Precision | str = Precision.FP32,
        channels_last: bool = False,
    ):
        super().__init__()
        self.net = net
        self.precision = Precision.parse(precision)
        self.channels_last = channels_last
        if channels_last:
            net.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor, time: Tensor, **cond) -> Tensor:
        dtype = x.dtype if x.is_floating_point() else time.dtype  # integer states: the time's
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(x.device.type, dtype=torch.bfloat16)
            if self.precision is Precision.BF16
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.net(x, time, **cond)
        return out.to(dtype)


def accelerate(
    net: nn.Module,
    *,
    precision: Precision | str = Precision.FP32,
    channels_last: bool = False,
    compile: bool = False,
) -> nn.Module:
    """``net`` with the chosen speed-ups, sharing its parameters (``net`` itself when none is
    asked for). ``compile`` applies torch.compile to the result."""
    if Precision.parse(precision) is not Precision.FP32 or channels_last:
        net = Accelerated(net, precision, channels_last)
    return torch.compile(net) if compile else net
