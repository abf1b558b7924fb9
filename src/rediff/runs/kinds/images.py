"""``data.kind = "images"``: a folder of PNG/JPEG images (``data.path``; class sub-folders
give labels), resized to ``data.image_size`` with ``data.channels``, optionally flipped
(``data.flip``): 8-bit pixels, so 256 levels."""

from __future__ import annotations

from rediff import data
from rediff.runs.kinds.base import DataConfig, DataKind, Dataset, register


def _check(config: DataConfig) -> None:
    if not config.path:
        raise ValueError(
            "data.kind = 'images' needs data.path, a folder of PNG/JPEG images "
            "(e.g. --set data.path=my_images)"
        )


def _load(config: DataConfig, seed: int) -> Dataset:
    x, labels = data.load_image_folder(config.path, config.image_size, config.channels)
    return Dataset(x, labels, levels=256)


KIND = register(DataKind("images", _load, check=_check))
