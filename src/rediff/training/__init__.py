"""Training: the session (open, step, log, checkpoint, close) and the loop, EMA, verified
checkpoints, torchrun. Configs and runs live in ``rediff.runs`` (re-exported here)."""

from rediff.runs import build_model, load_config, load_run, to_toml
from rediff.training.ema import EMA
from rediff.training.loop import train
from rediff.training.session import TrainingInterruptedError, build_objective

__all__ = [
    "EMA",
    "TrainingInterruptedError",
    "build_model",
    "build_objective",
    "load_config",
    "load_run",
    "to_toml",
    "train",
]
