"""PNG pictures people would rather look at than read: samples and loss curves."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from rediff._tensor import Tensor


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported lazily: it is heavy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_samples(x: Tensor, path: str | Path, title: str = "", cols: int = 10) -> Path:
    """2-D points as a scatter plot; images [N, C, H, W] in [-1, 1] as a grid of ``cols``
    columns (at most 100 images)."""
    plt = pyplot()
    x = x.detach().float().cpu()
    if x.ndim == 2 and x.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=1, alpha=0.5)
        ax.set_aspect("equal", adjustable="datalim")
    elif x.ndim == 4:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(image_grid(x[:100], cols), cmap="gray", vmin=-1, vmax=1)
        ax.axis("off")
    else:
        raise ValueError(
            f"can picture 2-D points [N, 2] or images [N, C, H, W], got {tuple(x.shape)}"
        )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def image_grid(x: Tensor, cols: int, gap: int = 1) -> Tensor:
    """Images [N, C, H, W] in [-1, 1] tiled into one picture [rows*(H+gap), cols*(W+gap)]
    (C = 1, values in [-1, 1]) or [..., C] (values in [0, 1]); tiles are separated by
    ``gap`` grey (0) pixels and the short last row is padded with black (-1)."""
    x = x.detach().float().cpu().clamp(-1, 1)
    x = torch.nn.functional.pad(x, (0, gap, 0, gap), value=0.0)
    n, c, h, w = x.shape
    rows = -(-n // cols)
    pad = torch.full((rows * cols - n, c, h, w), -1.0)
    tiles = torch.cat([x, pad]).reshape(rows, cols, c, h, w)
    grid = tiles.permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    return grid[..., 0] if c == 1 else (grid + 1) / 2


def save_loss_curve(metrics_csv: str | Path, path: str | Path) -> Path:
    """The training loss against the step, from a run's metrics.csv."""
    plt = pyplot()
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = [float(r["loss"]) for r in rows]
    ax.plot([int(r["step"]) for r in rows], values)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if min(values, default=1.0) > 0:  # score matching losses can be negative
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
