"""The registered data kinds (``DataKind``): every module of this package registers one
(``toy``, ``digits``, ``images``, ``array``, ``categories``, ``text``); see ``base`` for what
an entry holds."""

import importlib
import pkgutil

from rediff.runs.kinds.base import KINDS, DataConfig, DataKind, Dataset, points_scores, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["KINDS", "DataConfig", "DataKind", "Dataset", "points_scores", "register"]
