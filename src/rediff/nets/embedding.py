"""Time and class embeddings shared by every network."""

from __future__ import annotations

import math

import torch
from torch import nn

from rediff._tensor import Tensor
from rediff.model import NULL_LABEL


def sinusoidal(time: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer / DDPM sinusoidal features (Vaswani et al. 2017; Ho et al. 2020, app. B):
    [sin(time w_i), cos(time w_i)], w_i = max_period^(-i / (dim/2)), for time: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=time.device) / half)
    angles = time.to(torch.promote_types(time.dtype, torch.float32))[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class TimeEmbedding(nn.Module):
    """sinusoidal(scale * time) -> Linear -> SiLU -> Linear, plus an optional class embedding
    with one extra row for the null label ``rediff.model.NULL_LABEL`` (classifier-free
    guidance's unconditional model).

    ``scale`` maps the time input to a range where the sinusoids vary: 1000 for t in [0, 1],
    1 for DDPM step indices, and 250 for EDM's c_noise = log(sigma)/4 (Karras et al. 2022).
    """

    def __init__(
        self, base_dim: int, out_dim: int, scale: float = 1.0, num_classes: int | None = None
    ):
        super().__init__()
        self.base_dim, self.scale = base_dim, float(scale)
        self.mlp = nn.Sequential(
            nn.Linear(base_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )
        self.num_classes = num_classes
        self.classes = nn.Embedding(num_classes + 1, out_dim) if num_classes else None

    def forward(self, time: Tensor, labels: Tensor | None = None) -> Tensor:
        features = sinusoidal(self.scale * time, self.base_dim)
        emb = self.mlp(features.to(self.mlp[0].weight.dtype))  # a float64 net stays float64
        if self.classes is None:
            if labels is not None:
                raise ValueError("labels were given to a network built without num_classes")
            return emb
        if labels is None:  # unconditional: the null label
            labels = torch.full((time.shape[0],), NULL_LABEL, device=time.device)
        labels = torch.as_tensor(labels, device=time.device).long()
        valid = ((labels >= 0) & (labels < self.num_classes)) | (labels == NULL_LABEL)
        if not bool(valid.all()):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes - 1}] (or {NULL_LABEL}, the null "
                f"label), got values {sorted(set(labels.tolist()))[:10]}"
            )
        return emb + self.classes(torch.where(labels == NULL_LABEL, self.num_classes, labels))
