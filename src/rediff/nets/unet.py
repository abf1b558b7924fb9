"""The DDPM UNet (Ho et al. 2020, appendix B; the PixelCNN++ backbone with Wide-ResNet blocks,
GroupNorm, self-attention at chosen resolutions, and a sinusoidal time embedding).

Presets: ``UNet.digits()`` for 8x8 digits (trains on 2 CPU cores in minutes) and
``UNet.cifar10()``, DDPM's CIFAR-10 model (ch 128, multipliers 1, 2, 2, 2, two blocks per
resolution, attention at 16x16, dropout 0.1: 35.7M parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rediff._tensor import Tensor
from rediff.nets.embedding import TimeEmbedding

#: the 8x8 digits architecture (shared by ``UNet.digits`` and ``NoiseClassifier.digits``)
DIGITS = dict(
    channels=1,
    resolution=8,
    ch=32,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
    groups=8,
)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv, + Linear(temb), GroupNorm-SiLU-Dropout-Conv, residual (1x1 if the
    width changes)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the spatial positions, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


def down_path(
    ch: int,
    ch_mult: Sequence[int],
    num_res_blocks: int,
    attn_resolutions: Sequence[int],
    resolution: int,
    emb_dim: int,
    dropout: float,
    groups: int,
) -> tuple[nn.ModuleList, list[int]]:
    """The UNet's downsampling half (residual blocks, attention at ``attn_resolutions``,
    strided convolutions between levels) and the widths of the skips it leaves."""
    if resolution % 2 ** (len(ch_mult) - 1):
        raise ValueError(
            f"resolution {resolution} is not divisible by 2^{len(ch_mult) - 1}, which "
            f"ch_mult={tuple(ch_mult)} needs"
        )
    down = nn.ModuleList()
    widths, width, res = [ch], ch, resolution
    for level, mult in enumerate(ch_mult):
        for _ in range(num_res_blocks):
            down.append(ResBlock(width, ch * mult, emb_dim, dropout, groups))
            width = ch * mult
            if res in attn_resolutions:
                down.append(Attention(width, groups))
            widths.append(width)
        if level != len(ch_mult) - 1:
            down.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
            widths.append(width)
            res //= 2
    return down, widths


def middle(width: int, emb_dim: int, dropout: float, groups: int) -> nn.ModuleList:
    """Residual block, self-attention, residual block at the lowest resolution."""
    return nn.ModuleList(
        [
            ResBlock(width, width, emb_dim, dropout, groups),
            Attention(width, groups),
            ResBlock(width, width, emb_dim, dropout, groups),
        ]
    )


def check_image(x: Tensor, channels: int, resolution: int, name: str) -> None:
    if x.shape[1:] != (channels, resolution, resolution):
        raise ValueError(
            f"{name} built for images [B, {channels}, {resolution}, {resolution}] got shape "
            f"{tuple(x.shape)}"
        )


class Encoder(nn.Module):
    """The UNet's first half, shared by ``UNet`` and ``NoiseClassifier``: time (and class)
    embedding, input convolution, the downsampling path and the middle blocks. Arguments as
    ``UNet``'s (``in_channels``: the input's channels when they differ from the output's);
    ``widths`` are the channel widths of the skips the path leaves."""

    def __init__(
        self,
        channels: int,
        resolution: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float,
        groups: int,
        time_scale: float,
        num_classes: int | None = None,
        in_channels: int | None = None,
    ):
        super().__init__()
        self.channels, self.resolution = channels, resolution
        self.in_channels = in_channels or channels
        emb_dim = 4 * ch
        self.embed = TimeEmbedding(ch, emb_dim, time_scale, num_classes)
        self.conv_in = nn.Conv2d(self.in_channels, ch, 3, padding=1)
        self.down, self.widths = down_path(
            ch, ch_mult, num_res_blocks, attn_resolutions, resolution, emb_dim, dropout, groups
        )
        self.mid = middle(self.widths[-1], emb_dim, dropout, groups)

    def encode(self, x: Tensor, time: Tensor, labels: Tensor | None = None):
        """(lowest-resolution features, skips, embedding) of images x [B, C, H, W]."""
        check_image(x, self.in_channels, self.resolution, type(self).__name__)
        emb = self.embed(time, labels)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, (ResBlock, Attention)) else layer(h)
            if not isinstance(layer, Attention):
                skips.append(h)
            else:
                skips[-1] = h
        for layer in self.mid:
            h = layer(h, emb)
        return h, skips, emb


class UNet(Encoder):
    """net(x [B, C, H, W], time [B], labels=None) -> [B, C, H, W].

    Args:
        channels: image channels C.
        resolution: H = W (must be divisible by 2^(len(ch_mult) - 1)).
        ch: base width; ch_mult: width multiplier per resolution level.
        num_res_blocks: residual blocks per level (down path; one more on the way up).
        attn_resolutions: resolutions (e.g. 16) with self-attention after each block.
        dropout: inside residual blocks. groups: GroupNorm groups (32 in DDPM).
        time_scale: see ``TimeEmbedding``. num_classes: class conditioning with a null label.
        outputs: output tensors shaped like x, stacked on the channels ([B, outputs C, H, W]).
        in_channels: the input's channels, if not C (e.g. a [MASK] indicator per channel).
    """

    def __init__(
        self,
        channels: int = 3,
        resolution: int = 32,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        groups: int = 32,
        time_scale: float = 1.0,
        num_classes: int | None = None,
        outputs: int = 1,
        in_channels: int | None = None,
    ):
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
            num_classes,
            in_channels,
        )
        emb_dim, widths = 4 * ch, list(self.widths)
        width, res = widths[-1], resolution // 2 ** (len(ch_mult) - 1)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(width + widths.pop(), ch * mult, emb_dim, dropout, groups))
                width = ch * mult
                if res in attn_resolutions:
                    self.up.append(Attention(width, groups))
            if level != 0:
                self.up.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="nearest"),
                        nn.Conv2d(width, width, 3, padding=1),
                    )
                )
                res *= 2
        self.out = nn.Sequential(
            _norm(width, groups), nn.SiLU(), nn.Conv2d(width, outputs * channels, 3, padding=1)
        )

    @classmethod
    def digits(cls, **overrides) -> UNet:
        """8x8 single-channel digits: ch 32, levels 8 -> 4, attention at 4, ~0.6M parameters."""
        return cls(**{**DIGITS, "dropout": 0.0, **overrides})

    @classmethod
    def cifar10(cls, **overrides) -> UNet:
        """DDPM's CIFAR-10 configuration (Ho et al. 2020, appendix B): 35.7M parameters."""
        return cls(**{**dict(channels=3, resolution=32), **overrides})

    def forward(self, x: Tensor, time: Tensor, labels: Tensor | None = None) -> Tensor:
        h, skips, emb = self.encode(x, time, labels)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:  # attention or upsampling
                h = layer(h)
        return self.out(h)
