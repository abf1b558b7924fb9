"""scikit-learn's bundled 8x8 handwritten digits (no download), as diffusion-ready tensors."""

from __future__ import annotations

import torch

from rediff._tensor import Tensor

#: pixel values in the scikit-learn digits run from 0 to this maximum
DIGITS_MAX = 16.0


def load_digits() -> tuple[Tensor, Tensor]:
    """All 1797 digits: images [N, 1, 8, 8] float32 scaled from [0, 16] to [-1, 1], labels [N].

    The pixel map is x = 2 p / 16 - 1 (17 grey levels); ``to_pixels`` inverts it.
    """
    from sklearn.datasets import load_digits as _sklearn_digits  # heavy import, done lazily

    pixels, labels = _sklearn_digits(return_X_y=True)
    images = torch.as_tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return 2.0 * images / DIGITS_MAX - 1.0, torch.as_tensor(labels, dtype=torch.int64)


#: digits held out from training (the Frechet-distance floor's reference), of 1797
HELD_OUT = 360


def digits_split(split: str = "train") -> tuple[Tensor, Tensor]:
    """A fixed split of ``load_digits``: ``train`` (1437 digits, what rediff trains on) or
    ``held_out`` (360), by one seeded permutation, the same on every machine."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    images, labels = load_digits()
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    idx = order[HELD_OUT:] if split == "train" else order[:HELD_OUT]
    return images[idx], labels[idx]


def to_pixels(images: Tensor) -> Tensor:
    """Map [-1, 1] images back to the digits' [0, 16] grey levels (clipped, not rounded)."""
    return ((images.clamp(-1.0, 1.0) + 1.0) * (DIGITS_MAX / 2.0)).float()
