"""The run layer: a trained run as one value, below both training and evaluation.

    config.toml + run.json + weights  --load_run-->  Run(path, config, spec, model)
    Run  --draw-->  samples (steered by labels and guidance)     (rediff.runs.steering)

``Run`` holds the config (typed choices, ``rediff.runs.config``), the data's description
(``DataSpec``: kind, per-sample shape, levels, classes; written as ``run.json`` when training
starts) and the model. Loading reads only the run directory: a run is sampled on a machine
that lacks its data; ``Run.data()`` reads the data when a caller needs them (scores, NLL).
Data kinds are registered entries (``rediff.runs.kinds``), networks too
(``rediff.runs.nets``).
"""

from rediff.runs.config import Config, load_config, to_toml
from rediff.runs.kinds import KINDS, DataConfig, DataKind, Dataset
from rediff.runs.nets import NETS, ModelConfig, NetKind
from rediff.runs.run import Model, Run, build_model, load_run, load_weights, upgrade
from rediff.runs.spec import DataSpec
from rediff.runs.steering import Drawn, Guide, draw, steered

__all__ = [
    "KINDS",
    "NETS",
    "Config",
    "DataConfig",
    "DataKind",
    "DataSpec",
    "Dataset",
    "Drawn",
    "Guide",
    "Model",
    "ModelConfig",
    "NetKind",
    "Run",
    "build_model",
    "draw",
    "load_config",
    "load_run",
    "load_weights",
    "steered",
    "to_toml",
    "upgrade",
]
