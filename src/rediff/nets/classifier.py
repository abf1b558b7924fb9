"""A noise-conditional image classifier: the DDPM UNet's downsampling half and middle, then
GroupNorm, SiLU, global average pooling and a linear layer to class logits (the encoder
classifier of Dhariwal & Nichol 2021, section 4, with mean pooling).

It is called like every rediff net, ``net(x_t, time) -> logits [B, num_classes]``, and is
wrapped into ``rediff.model.NoisyClassifier`` for classifier guidance. For flat data use
``MLP(dim, out_features=num_classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from rediff._tensor import Tensor
from rediff.nets.unet import DIGITS, Encoder, _norm


class NoiseClassifier(Encoder):
    """net(x [B, C, H, W], time [B]) -> logits [B, num_classes]; arguments as ``UNet``'s."""

    def __init__(
        self,
        num_classes: int,
        channels: int = 3,
        resolution: int = 32,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        groups: int = 32,
        time_scale: float = 1.0,
    ):
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        super().__init__(
            channels,
            resolution,
            ch,
            ch_mult,
            num_res_blocks,
            attn_resolutions,
            dropout,
            groups,
            time_scale,
        )
        self.num_classes = num_classes
        widths = self.widths
        self.out = nn.Sequential(
            _norm(widths[-1], groups),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(widths[-1], num_classes),
        )

    @classmethod
    def digits(cls, **overrides) -> NoiseClassifier:
        """8x8 single-channel digits, ten classes (the encoder of ``UNet.digits``)."""
        return cls(**{"num_classes": 10, **DIGITS, **overrides})

    @classmethod
    def cifar10(cls, **overrides) -> NoiseClassifier:
        """32x32 RGB, ten classes (the encoder of ``UNet.cifar10``)."""
        return cls(**{**dict(num_classes=10, channels=3, resolution=32), **overrides})

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        h, _, _ = self.encode(x, time)
        return self.out(h)
