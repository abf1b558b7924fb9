"""PNG pictures people would rather look at than read: samples and loss curves, each with a
caption that says what it shows."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import torch

from rediff._tensor import Tensor

#: file types a picture may be written as (matplotlib picks the format from the suffix)
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported lazily: it is heavy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def can_picture(shape: tuple[int, ...]) -> bool:
    """Whether samples of per-sample ``shape`` can be pictured: 2-D points [2] or images
    [C, H, W] with 1 or 3 channels."""
    return tuple(shape) == (2,) or (len(shape) == 3 and shape[0] in (1, 3))


def check_picture(shape: tuple[int, ...], path: str | Path) -> Path:
    """``path`` as a Path, or a ValueError if it has no picture suffix or samples of
    ``shape`` cannot be pictured (checked before any work is done)."""
    path = Path(path)
    if path.suffix.lower() not in PICTURE_SUFFIXES:
        raise ValueError(
            f"{path}: a picture must end in {', '.join(PICTURE_SUFFIXES)} (or write the samples "
            "as arrays: .npz)"
        )
    if not can_picture(shape):
        raise ValueError(
            f"samples of shape {list(shape)} cannot be pictured (only 2-D points and 1- or "
            "3-channel images); write them as arrays instead: --out samples.npz"
        )
    return path


def finish(fig, path: str | Path, title: str = "", caption: str = "") -> Path:
    """Give ``fig`` its title and a caption below the panels (wrapped to the figure's width),
    save it (format from the suffix) and close it."""
    plt = pyplot()
    if title:
        fig.suptitle(title, fontsize=9)
    lines = textwrap.wrap(caption, int(fig.get_figwidth() * 16)) if caption else []
    bottom = min(0.4, (0.12 * len(lines) + 0.05) / fig.get_figheight()) if lines else 0.0
    if lines:
        fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, va="bottom", ha="left")
    fig.tight_layout(rect=(0, bottom, 1, 0.97 if title else 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def image_side(n: int) -> int:
    """Columns of a near-square grid of n images (10 for 100)."""
    return max(1, math.ceil(math.sqrt(n)))


def save_samples(
    x: Tensor,
    path: str | Path,
    title: str = "",
    cols: int | None = None,
    labels: Tensor | None = None,
    caption: str = "",
) -> Path:
    """2-D points as a scatter plot (coloured by label), images [N, C, H, W] in [-1, 1] as a
    grid of ``cols`` columns (default near-square; with labels, sorted so that each class
    starts its rows in order)."""
    plt = pyplot()
    x = x.detach().float().cpu()
    check_picture(tuple(x.shape[1:]), path)
    if x.ndim == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        colour = {} if labels is None else {"c": labels.cpu().numpy(), "cmap": "tab10"}
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=1, alpha=0.5, **colour)
        ax.set_aspect("equal", adjustable="datalim")
    else:
        if labels is not None:
            x = x[torch.argsort(labels.cpu(), stable=True)]
        cols = cols or image_side(x.shape[0])
        rows = -(-x.shape[0] // cols)
        side = max(4.0, min(16.0, 0.14 * x.shape[-1] * max(cols, rows) / 8))
        fig, ax = plt.subplots(figsize=(side, side * rows / cols + 0.4))
        ax.imshow(image_grid(x, cols), cmap="gray", vmin=-1, vmax=1)
        ax.axis("off")
    return finish(fig, path, title, caption)


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


def save_loss_curve(rows: list[dict[str, float]], path: str | Path, caption: str = "") -> Path:
    """The training loss against the step, from a run's metrics rows (``runs.read_metrics``)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    values = [r["loss"] for r in rows]
    ax.plot([r["step"] for r in rows], values)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if min(values, default=1.0) > 0:  # score matching losses can be negative
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    return finish(fig, path, "training loss", caption)
