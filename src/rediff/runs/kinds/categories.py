"""``data.kind = "categories"``: integer categories from a user's .npy (or .npz with ``x``
and optional ``labels``) file, ``data.path``: token sequences [N, L], or grids of levels
[N, C, H, W] (``data.ordinal = true``). Values must lie in 0..K-1 with K = ``data.categories``
(0: the data's largest value + 1). For discrete processes (``schedule.kind = "d3pm_*"``):
the tokens are modelled as they are, with no notion of distance unless they are ordinal."""

from __future__ import annotations

from rediff import data
from rediff.runs.kinds.base import DataConfig, DataKind, Dataset, register


def _check(config: DataConfig) -> None:
    if not config.path:
        raise ValueError("data.kind = 'categories' needs data.path, a .npy or .npz of integers")
    if config.categories == 1 or config.categories < 0:
        raise ValueError(
            f"data.categories must be 0 (from the data) or >= 2, got {config.categories}"
        )


def _load(config: DataConfig, seed: int) -> Dataset:
    array = data.load_array(config.path, integers=True)
    values = array.x
    largest = int(values.max())
    categories = config.categories or largest + 1
    if int(values.min()) < 0 or largest >= categories:
        raise ValueError(
            f"{config.path} holds values in [{int(values.min())}, {largest}], outside the "
            f"categories 0..{categories - 1} (data.categories = {config.categories})"
        )
    return Dataset(values, array.labels, levels=max(categories, 2), ordinal=config.ordinal)


KIND = register(DataKind("categories", _load, check=_check))
