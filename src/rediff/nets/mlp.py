"""A residual MLP with a time embedding, for low-dimensional data (2-D toy sets)."""

from __future__ import annotations

import math

from torch import nn

from rediff._tensor import Tensor
from rediff.nets.embedding import TimeEmbedding


class _Block(nn.Module):
    """h + Linear(SiLU(Linear(LayerNorm(h)) + temb))."""

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.outer = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.outer(self.act(self.inner(self.norm(h)) + self.emb(emb)))


class MLP(nn.Module):
    """net(x [B, *S], time [B], labels=None) -> [B, *S] with S flattened to ``dim`` features
    (``outputs`` = 2: [B, 2 S_0, *S_1:], e.g. a prediction and a variance, stacked on dim 1).

    Args:
        dim: prod(S), the data dimension.
        width, depth: hidden width and number of residual blocks.
        time_scale: see ``TimeEmbedding`` (1000 for t in [0, 1]).
        num_classes: enables class conditioning with a null label.
        out_features: return [B, out_features] instead (e.g. a classifier's logits).
    """

    def __init__(
        self,
        dim: int,
        width: int = 256,
        depth: int = 4,
        emb_dim: int = 128,
        time_scale: float = 1000.0,
        num_classes: int | None = None,
        outputs: int = 1,
        out_features: int | None = None,
    ):
        super().__init__()
        self.dim, self.outputs, self.out_features = dim, outputs, out_features
        self.embed = TimeEmbedding(emb_dim, emb_dim, time_scale, num_classes)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(
            nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, out_features or outputs * dim)
        )

    def forward(self, x: Tensor, time: Tensor, labels: Tensor | None = None) -> Tensor:
        if math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"MLP built for dimension {self.dim} got x of shape {tuple(x.shape)}")
        emb = self.embed(time, labels)
        h = self.inp(x.reshape(x.shape[0], -1))
        for block in self.blocks:
            h = block(h, emb)
        if self.out_features:
            return self.out(h)
        return self.out(h).reshape(x.shape[0], self.outputs * x.shape[1], *x.shape[2:])
