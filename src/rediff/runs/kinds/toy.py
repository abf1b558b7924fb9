"""``data.kind = "toy"``: a 2-D toy set (``data.name``, see ``rediff.data.TOY_SETS``) of
``data.n`` points drawn once with the run's seed; scored by sliced Wasserstein and energy
distance against fresh points of the same set."""

from __future__ import annotations

import torch

from rediff import data
from rediff.runs.kinds.base import DataConfig, DataKind, Dataset, points_scores, register


def _check(config: DataConfig) -> None:
    if config.name not in data.TOY_SETS:
        valid = ", ".join(map(repr, data.TOY_SETS))
        raise ValueError(f"unknown data.name {config.name!r} for data.kind = 'toy'; valid: {valid}")
    if config.n < 1:
        raise ValueError(f"data.n must be >= 1, got {config.n}")


def _load(config: DataConfig, seed: int) -> Dataset:
    return Dataset(data.toy(config.name, config.n, generator=torch.Generator().manual_seed(seed)))


KIND = register(DataKind("toy", _load, check=_check, score=points_scores))
