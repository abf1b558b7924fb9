"""``data.kind = "digits"``: scikit-learn's bundled 8x8 digits (no download) in [-1, 1], 17
grey levels, labelled 0-9; runs train on a fixed 1437-digit split and keep 360 held out.

Samples are scored by a Frechet distance in the features of a small classifier that rediff
trains itself (no downloaded Inception weights): a two-layer CNN trained deterministically
(fixed seed, fixed order) on the training split; its 64 penultimate features play the role of
Inception features in FID. The distance's floor is that of the 360 held-out real digits
against the training digits: a model cannot be told from real data by this measure when its
samples (as many as the held-out set) reach the floor, and a value below the floor means the
samples lie closer to the 1437 training digits than unseen digits do (memorisation).
Class-conditional samples are also scored by the classifier's accuracy on their labels.

This file is the whole kind: the example of what adding a data kind takes.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from rediff import data, metrics
from rediff._tensor import Tensor, check_finite
from rediff.runs.kinds.base import DataKind, Dataset, register

NUM_DIGITS = 10
#: grey levels of the digits' pixels (0..16)
LEVELS = int(data.digits.DIGITS_MAX) + 1


class DigitsClassifier(nn.Module):
    """8x8 digits -> 10 logits; ``features`` are the 64 penultimate activations."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, NUM_DIGITS)

    def features(self, x: Tensor) -> Tensor:
        if x.shape[1:] != (1, 8, 8):
            raise ValueError(f"the digits classifier takes [N, 1, 8, 8], got {tuple(x.shape)}")
        check_finite("digits", x)
        return self.body(x.float().clamp(-1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@functools.cache
def digits_classifier(epochs: int = 20) -> DigitsClassifier:
    """The classifier, trained once per process on the digits training split (seed 0)."""
    x, y = data.digits_split("train")
    with torch.random.fork_rng(), torch.enable_grad():  # callers may hold no_grad
        torch.manual_seed(0)
        net = DigitsClassifier()
        optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
        order = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            for idx in torch.randperm(x.shape[0], generator=order).split(64):
                loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return net.eval().requires_grad_(False)


def _features(x: Tensor) -> Tensor:
    with torch.no_grad():
        return digits_classifier().features(x.cpu())


def digits_accuracy(x: Tensor, labels: Tensor) -> float:
    """The fraction of digits x [N, 1, 8, 8] the classifier labels as ``labels``."""
    with torch.no_grad():
        predicted = digits_classifier()(x.cpu()).argmax(1)
    return float((predicted == labels.cpu()).double().mean())


def digits_frechet(x: Tensor) -> float:
    """Frechet distance between digits x [N, 1, 8, 8] and the training split, in the
    classifier's features."""
    return metrics.frechet_distance(_features(x), _features(data.digits_split("train")[0]))


def digits_frechet_floor() -> float:
    """``digits_frechet`` of the 360 held-out real digits: the floor a perfect model reaches
    with as many samples."""
    return digits_frechet(data.digits_split("held_out")[0])


def _score(samples: Tensor, labels: Tensor | None, reference: Dataset, seed: int):
    """Frechet distance (and, for class-conditional samples, accuracy) beside their floors:
    the held-out digits' distance and the classifier's held-out accuracy."""
    scores = [
        metrics.Score(
            "Frechet distance (digits features)", digits_frechet(samples), digits_frechet_floor()
        )
    ]
    if labels is not None:
        held_out = digits_accuracy(*data.digits_split("held_out"))
        accuracy = digits_accuracy(samples, labels)
        scores.append(metrics.Score("classifier accuracy (class-conditional)", accuracy, held_out))
    return scores


def _split(name: str) -> Dataset:
    x, labels = data.digits_split(name)
    return Dataset(x, labels, levels=LEVELS)


KIND = register(
    DataKind(
        "digits",
        load=lambda config, seed: _split("train"),
        held_out=lambda config, seed: _split("held_out"),
        score=_score,
        default_n=lambda reference: data.digits.HELD_OUT,
    )
)
