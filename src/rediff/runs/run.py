"""A trained run as one value (``Run``), loaded from its directory alone (``load_run``);
``build_model`` makes the model a config describes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rediff._io import atomic_write, in_run, load_tensors
from rediff.discrete import (
    AutoregressiveModel,
    DiscreteModel,
    DiscreteProcess,
    InsDelModel,
    MaskedProcess,
)
from rediff.model import DiffusionModel, NoisyClassifier
from rediff.runs.config import (
    Betas,
    Config,
    ScheduleKind,
    from_values,
    load_config,
    read_toml,
    schedule_parameters,
    to_toml,
)
from rediff.runs.kinds import Dataset
from rediff.runs.spec import DataSpec

Model = DiffusionModel | NoisyClassifier | DiscreteModel | AutoregressiveModel | InsDelModel

#: an insertion/deletion model's maximum length, in units of data.length (the longest data
#: sequence): the sequences between x_0 and x_T hold DEL and INS sentinels besides the
#: tokens (measured on the forward process: the longest of a trajectory exceeds twice the
#: data's length in < 0.3% of trajectories for lengths >= 17)
MAX_LENGTH_FACTOR = 2


def discrete_categories(config: Config, levels: int | None) -> int:
    """The number of categories a discrete config models: the data's ``levels``."""
    if levels is None:
        raise ValueError(
            f"schedule.kind = {config.schedule.kind.value!r} needs quantised data (digits, "
            "images, integer arrays, categories, text); these are continuous values: use a "
            "continuous schedule.kind"
        )
    return levels


def discrete_process(
    config: Config, levels: int | None, ordinal: bool
) -> DiscreteProcess | MaskedProcess:
    """The discrete (d3pm) or masked process of a config over data of ``levels`` values."""
    process = config.schedule.build(categories=discrete_categories(config, levels))
    if process.ordinal and not ordinal:
        raise ValueError(
            f"schedule.kind = {config.schedule.kind.value!r} moves between neighbouring "
            "levels, but these categories are unordered tokens: use d3pm_uniform or "
            "d3pm_absorbing (or set data.ordinal = true if the values are levels)"
        )
    return process


def build_model(
    config: Config, shape: tuple[int, ...], *, levels: int | None = None, ordinal: bool = True
) -> Model:
    """The model ``config`` describes for data of per-sample ``shape``: a DiffusionModel,
    with ``loss.kind = "classifier"`` a NoisyClassifier (the same ``model.net`` builds the
    classifier of that size: an MLP, or the encoder half of the UNet preset), for a d3pm or
    masked schedule a DiscreteModel over the data's ``levels`` (``ordinal``: whether their
    order means anything), for schedule.kind = "none" an AutoregressiveModel, for "insdel"
    an InsDelModel whose sequences may reach MAX_LENGTH_FACTOR x ``shape[0]`` tokens."""
    m = config.model
    if config.schedule.kind is ScheduleKind.NONE:  # the config checked the net's causal form
        categories = discrete_categories(config, levels)
        return AutoregressiveModel(m.net.autoregressive(m, tuple(shape), categories), categories)
    if config.schedule.kind is ScheduleKind.INSDEL:
        process = config.schedule.build(categories=discrete_categories(config, levels))
        max_length = MAX_LENGTH_FACTOR * shape[0]
        return InsDelModel(m.net.insdel(m, tuple(shape), process, max_length), process, max_length)
    if config.schedule.discrete:
        process = discrete_process(config, levels, ordinal)
        return DiscreteModel(m.net.discrete(m, tuple(shape), process), process)
    schedule = config.schedule.build()
    if config.classifier:
        net = m.net.classifier(m, tuple(shape))
        return NoisyClassifier(net, schedule, m.time_input, m.sigma_data)
    net = m.net.denoiser(m, tuple(shape))
    return DiffusionModel(net, schedule, m.target, m.time_input, m.sigma_data, m.learned_variance)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights, or a ValueError saying they do not fit the config."""
    try:
        model.load_state_dict(load_tensors(path))
    except RuntimeError as error:
        raise ValueError(
            f"{path} does not fit the run's config (was it written by another config?): {error}"
        ) from None


@dataclass(frozen=True)
class Run:
    """A trained run: its directory, config, data description and model (EMA weights by
    default)."""

    path: Path
    config: Config
    spec: DataSpec
    model: Model

    def data(self) -> Dataset:
        """The run's training data (read now: the data must be where the config says)."""
        loaded = self.spec.kind.load(self.config.data, self.config.seed)
        return self.spec.check(loaded, "the training data")

    def held_out(self) -> Dataset:
        """Data the model was not trained on where the kind has such a split (digits, text),
        else the training data."""
        held_out = self.spec.kind.held_out
        if held_out is None:
            return self.data()
        return self.spec.check(held_out(self.config.data, self.config.seed), "the held-out data")

    @property
    def classes(self) -> int:
        """The classes the model is conditioned on (0: unconditional)."""
        return self.config.model.num_classes


def _run_directory(path: str | Path) -> Path:
    run = Path(path)
    if not in_run(run, "config.toml").is_file():
        raise FileNotFoundError(
            f"{run} is not a run directory (no config.toml); give a folder written by rediff train"
        )
    return run


def load_run(path: str | Path, weights: str = "ema", device: str | None = None) -> Run:
    """The run in directory ``path`` with its ``weights`` ('ema' or 'model'), loaded without
    pickle and without reading the data."""
    run = _run_directory(path)
    spec = DataSpec.load(run)
    config = load_config(run / "config.toml")
    model = build_model(config, spec.shape, levels=spec.levels, ordinal=spec.ordinal)
    file = in_run(run, f"{weights}.safetensors")
    if not file.is_file():
        raise FileNotFoundError(
            f"{run} has no weights yet ({file.name}): its training stopped before the first "
            "checkpoint; continue it with rediff train CONFIG --run-dir RUN --resume"
        )
    load_weights(model, file)
    return Run(run, config, spec, model.eval().to(device) if device else model.eval())


def upgrade(path: str | Path) -> DataSpec:
    """Convert a run directory written by an older rediff: its config.toml loses the schedule
    parameters of other kinds (the old writer wrote them all), and run.json is written from
    the run's data (read once). Runs already converted are left as they are."""
    run = _run_directory(path)
    if in_run(run, "run.json").is_file():
        return DataSpec.load(run)
    values = read_toml(run / "config.toml")
    schedule = values.get("schedule", {})
    kind = ScheduleKind.parse(schedule.get("kind", ScheduleKind.DISCRETE_VP), "schedule.kind")
    discrete = kind is ScheduleKind.DISCRETE_VP
    betas = Betas.parse(schedule.get("betas", Betas.LINEAR)) if discrete else None
    own = schedule_parameters(kind, betas)
    keep = {"kind", "betas", *own} if discrete else {"kind", *own}
    values["schedule"] = {k: v for k, v in schedule.items() if k in keep}
    config = from_values(values)
    spec = DataSpec.of(config.data.kind, config.data.kind.load(config.data, config.seed))
    text = to_toml(config)
    atomic_write(in_run(run, "config.toml"), lambda tmp: Path(tmp).write_text(text))
    spec.save(run)
    return spec
