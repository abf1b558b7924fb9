"""Run configuration: frozen dataclasses read strictly from TOML (DESIGN.md, style rule 10).

Unknown sections or keys, values of the wrong type and numbers outside their range
(``RANGES``) are errors that name them; nothing is guessed. ``--set section.key=value``
overrides use the same checks.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from rediff import schedules
from rediff.schedules import Schedule


@dataclass(frozen=True)
class DataConfig:
    kind: str = "toy"  # toy | digits | images | array
    name: str = "moons"  # toy set name (data.TOY_SETS)
    n: int = 20000  # toy samples drawn once, with the run's seed
    path: str = ""  # images: a folder of PNG/JPEG; array: a .npy/.npz file
    image_size: int = 0  # images: resize to this square size (0: keep, all must match)
    channels: int = 3  # images: 3 (RGB) or 1 (greyscale)
    flip: bool = False  # images: random left-right flips


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "discrete_vp"  # discrete_vp | linear_vp | subvp | ve | edm
    betas: str = "linear"  # discrete_vp: linear | cosine
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def build(self) -> Schedule:
        """The schedule these parameters describe."""
        if self.kind == "discrete_vp":
            if self.betas == "cosine":
                return schedules.DiscreteVP.cosine(self.T)
            if self.betas == "linear":
                return schedules.DiscreteVP.linear(self.T, self.beta_start, self.beta_end)
            raise ValueError(f"schedule.betas must be 'linear' or 'cosine', got {self.betas!r}")
        builders = {
            "linear_vp": lambda: schedules.LinearVP(self.beta_min, self.beta_max),
            "subvp": lambda: schedules.SubVP(self.beta_min, self.beta_max),
            "ve": lambda: schedules.VE(self.sigma_min, self.sigma_max),
            "edm": lambda: schedules.EDM(self.sigma_min, self.sigma_max),
        }
        if self.kind not in builders:
            valid = ", ".join(["discrete_vp", *builders])
            raise ValueError(f"unknown schedule.kind {self.kind!r}; valid kinds: {valid}")
        return builders[self.kind]()


@dataclass(frozen=True)
class ModelConfig:
    net: str = "mlp"  # mlp | unet_digits | unet_cifar10
    # v by default: briefly trained eps models sent a few ODE samples (ddim, dpm++2m) far off
    # the 2-D data while v and x0 models did not (measured on moons, 800 steps)
    target: str = "v"
    time_input: str = "t"
    time_scale: float = 1000.0
    sigma_data: float = 0.5
    width: int = 256  # mlp
    depth: int = 4  # mlp
    num_classes: int = 0  # 0: unconditional
    dropout: float = 0.0  # unet_*
    learned_variance: bool = False  # the net also outputs DDPM's reverse variance (hybrid loss)


@dataclass(frozen=True)
class LossConfig:
    kind: str = "denoising"  # denoising | vlb | hybrid | sliced_sm | exact_sm | classifier
    weighting: str = "simple"
    time_sampler: str = "uniform"
    vlb_weight: float = 1e-3  # hybrid: denoising + vlb_weight * vlb
    variance: str = "beta"  # vlb / hybrid: reverse variance, beta | beta_tilde | learned
    probes: int = 1  # sliced_sm
    probe: str = "rademacher"  # sliced_sm: rademacher | gaussian


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 256  # the global batch (over all processes and micro-batches)
    accumulate: int = 1  # micro-batches per step (gradient accumulation: less memory, same step)
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_half_life: float = 20000.0  # in samples
    label_dropout: float = 0.0  # class-conditional: this fraction of labels -> NULL_LABEL (CFG)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # checkpoint directories kept (the newest valid one resumes)
    log_every: int = 50
    sample_every: int = 0  # write samples/step_*.png every this many steps (0: never)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    channels_last: bool = False  # images in channels-last memory format (GPU tensor cores)
    compile: bool = False  # torch.compile the network


@dataclass(frozen=True)
class SampleConfig:
    sampler: str = "dpm++2m"
    steps: int = 20
    n: int = 2000


@dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def sampler_options(self, sampler: str) -> dict[str, Any]:
        """Options this run implies for a sampler: DDPM samples with the model's learned
        variance when it has one."""
        learned = sampler == "ddpm" and self.model.learned_variance
        return {"variance": "learned"} if learned else {}


_AT_LEAST_ONE = (lambda v: v >= 1, ">= 1")
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")

#: the range of every numeric option (the schedule's parameters are checked by the schedule)
RANGES = {
    "data.n": _AT_LEAST_ONE,
    "data.image_size": _NON_NEGATIVE,
    "data.channels": (lambda v: v in (1, 3), "1 or 3"),
    "model.time_scale": _POSITIVE,
    "model.sigma_data": _POSITIVE,
    "model.width": _AT_LEAST_ONE,
    "model.depth": _AT_LEAST_ONE,
    "model.num_classes": _NON_NEGATIVE,
    "model.dropout": _FRACTION,
    "loss.vlb_weight": _NON_NEGATIVE,
    "loss.probes": _AT_LEAST_ONE,
    "train.steps": _AT_LEAST_ONE,
    "train.batch_size": _AT_LEAST_ONE,
    "train.accumulate": _AT_LEAST_ONE,
    "train.lr": _POSITIVE,
    "train.warmup": _NON_NEGATIVE,
    "train.weight_decay": _NON_NEGATIVE,
    "train.grad_clip": _POSITIVE,
    "train.ema_half_life": _POSITIVE,
    "train.label_dropout": _FRACTION,
    "train.checkpoint_every": _AT_LEAST_ONE,
    "train.keep_checkpoints": _AT_LEAST_ONE,
    "train.log_every": _AT_LEAST_ONE,
    "train.sample_every": _NON_NEGATIVE,
    "sample.steps": _AT_LEAST_ONE,
    "sample.n": _AT_LEAST_ONE,
}


def check_ranges(config: Config) -> Config:
    """``config`` if every numeric option is finite and in its RANGES, else a ValueError that
    names the first one that is not."""
    for key, (ok, text) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if not (math.isfinite(value) and ok(value)):
            raise ValueError(f"{key} must be {text}, got {value!r}")
    return config


#: train options that change how a step is computed, not what it computes: a run may resume
#: with other values (another number of micro-batches, device or compiled net)
EXECUTION_OPTIONS = ("accumulate", "device", "compile", "channels_last")


def run_identity(config: Config) -> Config:
    """``config`` with the EXECUTION_OPTIONS at their defaults: two configs describe the same
    run (and may resume each other's checkpoints) if their identities are equal."""
    defaults = TrainConfig()
    execution = {name: getattr(defaults, name) for name in EXECUTION_OPTIONS}
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **execution))


def _check_value(where: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise ValueError(f"{where} must be of type {kind.__name__}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in {where or 'the top level'}; valid keys: {sorted(fields)}"
        )
    kwargs = {}
    for name, value in values.items():
        kind = fields[name].type
        sub = {
            "DataConfig": DataConfig,
            "ScheduleConfig": ScheduleConfig,
            "ModelConfig": ModelConfig,
            "LossConfig": LossConfig,
            "TrainConfig": TrainConfig,
            "SampleConfig": SampleConfig,
        }
        path = f"{where}.{name}" if where else name
        if kind in sub:
            if not isinstance(value, dict):
                raise ValueError(f"[{path}] must be a table, got {value!r}")
            kwargs[name] = _build(sub[kind], value, path)
        else:
            kwargs[name] = _check_value(
                path, value, {"int": int, "float": float, "str": str, "bool": bool}[kind]
            )
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ValueError(f"--set expects key=value (e.g. train.lr=3e-4), got {text!r}")
    key, raw = text.split("=", 1)
    value = tomllib.loads(f"v = {raw}")["v"] if raw else ""
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a TOML config (defaults where keys are absent) and apply ``section.key=value``
    overrides (values in TOML syntax: 3e-4, "cosine", true)."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path} is not valid TOML: {error}") from None
    for text in overrides:
        keys, value = _parse_override(text)
        table = values
        for key in keys[:-1]:
            table = table.setdefault(key, {})
        table[keys[-1]] = value
    return check_ranges(_build(Config, values, ""))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def to_toml(config: Config) -> str:
    """The config as TOML (written to a run directory, read back by ``load_config``)."""
    lines = [f"seed = {config.seed}"]
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        lines.append(f"\n[{section.name}]")
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            lines.append(f"{f.name} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"
