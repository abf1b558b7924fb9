"""Training: config (strict TOML), the loop with EMA and atomic, resumable checkpoints."""

from rediff.training.config import Config, load_config, to_toml
from rediff.training.ema import EMA
from rediff.training.loop import (
    TrainingInterruptedError,
    build_model,
    build_objective,
    load_data,
    load_run,
    train,
)

__all__ = [
    "EMA",
    "Config",
    "TrainingInterruptedError",
    "build_model",
    "build_objective",
    "load_config",
    "load_data",
    "load_run",
    "to_toml",
    "train",
]
