"""``data.kind = "array"``: a user's .npy (or .npz with ``x`` and optional ``labels``) file,
``data.path``, read without pickle. Integer arrays are 8-bit pixels (256 levels, mapped to
[-1, 1]); float arrays are used as they are (continuous). Points [N, d] are scored like the
toy sets."""

from __future__ import annotations

from rediff import data
from rediff.runs.kinds.base import DataConfig, DataKind, Dataset, points_scores, register


def _check(config: DataConfig) -> None:
    if not config.path:
        raise ValueError("data.kind = 'array' needs data.path, a .npy or .npz file")


def _load(config: DataConfig, seed: int) -> Dataset:
    array = data.load_array(config.path)
    return Dataset(array.x, array.labels, levels=256 if array.pixels else None)


KIND = register(DataKind("array", _load, check=_check, score=points_scores))
