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
from rediff.nets.embedding import TimeEmbedding
from rediff.nets.unet import DIGITS, _norm, check_image, down_path, encode, middle


class NoiseClassifier(nn.Module):
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
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        self.channels, self.resolution, self.num_classes = channels, resolution, num_classes
        emb_dim = 4 * ch
        self.embed = TimeEmbedding(ch, emb_dim, time_scale)
        self.conv_in = nn.Conv2d(channels, ch, 3, padding=1)
        self.down, widths = down_path(
            ch, ch_mult, num_res_blocks, attn_resolutions, resolution, emb_dim, dropout, groups
        )
        self.mid = middle(widths[-1], emb_dim, dropout, groups)
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
        check_image(x, self.channels, self.resolution, type(self).__name__)
        emb = self.embed(time)
        h, _ = encode(self.conv_in(x), self.down, self.mid, emb)
        return self.out(h)
