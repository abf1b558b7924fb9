"""Run configuration: frozen dataclasses read strictly from TOML (DESIGN.md, style rule 10).

Every choice is parsed into its typed value when the config is read (a ``Choice`` enum, or a
registered ``DataKind`` / ``NetKind``); unknown sections or keys, values of the wrong type,
numbers outside their range (``RANGES``) and options that do not fit together are errors that
name them. ``--set section.key=value`` overrides use the same checks.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from rediff import discrete, samplers, schedules
from rediff._choices import Choice
from rediff.divergence import Probe
from rediff.losses import Loss, TimeSampler, Weighting
from rediff.nets import Precision
from rediff.runs.kinds import DataConfig
from rediff.runs.nets import NETS, ModelConfig
from rediff.schedules import Schedule
from rediff.variational import ReverseVariance


class ScheduleKind(Choice, noun="schedule.kind"):
    DISCRETE_VP = "discrete_vp"
    LINEAR_VP = "linear_vp"
    SUBVP = "subvp"
    VE = "ve"
    EDM = "edm"
    # flow matching / rectified flow: alpha = 1 - t, sigma = t
    FLOW = "flow"
    # discrete-state processes (rediff.discrete, D3PM): the model predicts categories
    D3PM_UNIFORM = "d3pm_uniform"
    D3PM_ABSORBING = "d3pm_absorbing"
    D3PM_GAUSSIAN = "d3pm_gaussian"
    D3PM_BANDED = "d3pm_banded"
    # masked diffusion in continuous time (rediff.discrete.masked: MDLM / MD4)
    MASKED = "masked"
    # no forward process: the autoregressive baseline (loss.kind = "autoregressive")
    NONE = "none"
    # insertion and deletion on sequences of varying length (rediff.discrete.insdel)
    INSDEL = "insdel"

    @property
    def discrete(self) -> bool:
        """Whether the model is over categories (a D3PM, masked or insertion/deletion
        process, or none)."""
        return self.d3pm or self in (ScheduleKind.MASKED, ScheduleKind.NONE, ScheduleKind.INSDEL)

    @property
    def d3pm(self) -> bool:
        """Whether the forward process is a DiscreteProcess with integer steps."""
        return self.value.startswith("d3pm_")

    @property
    def stepped(self) -> bool:
        """Whether the process has integer steps and a beta schedule (``schedule.betas``)."""
        return self.d3pm or self is ScheduleKind.DISCRETE_VP

    @property
    def losses(self) -> tuple[Loss, ...]:
        """The losses that train a model of this kind."""
        if self.d3pm:
            return (Loss.DISCRETE_VLB, Loss.DISCRETE_CE, Loss.DISCRETE_HYBRID)
        if self is ScheduleKind.MASKED:
            return (Loss.MASKED,)
        if self is ScheduleKind.NONE:
            return (Loss.AUTOREGRESSIVE,)
        if self is ScheduleKind.INSDEL:
            return (Loss.INSDEL,)
        return tuple(k for k in Loss if not k.discrete)


class Betas(Choice, noun="schedule.betas"):
    LINEAR = "linear"
    COSINE = "cosine"
    MUTUAL_INFO = "mutual_info"  # discrete processes only: 1 / (T - t + 1)


def _constructor(kind: ScheduleKind, betas: Betas | None) -> Callable[..., Any]:
    """The constructor a schedule kind's parameters go to (their defaults are its own); a
    discrete process's takes the number of categories, which the data decide, too."""
    if kind.d3pm:
        return functools.partial(discrete.DiscreteProcess.make, kind.value[len("d3pm_") :])
    if kind is ScheduleKind.MASKED:
        return discrete.MaskedProcess
    if kind is ScheduleKind.NONE:
        return lambda categories: None
    if kind is ScheduleKind.INSDEL:
        return discrete.InsDelProcess.make
    if kind is ScheduleKind.DISCRETE_VP:
        return schedules.DiscreteVP.linear if betas is Betas.LINEAR else schedules.DiscreteVP.cosine
    return {
        ScheduleKind.LINEAR_VP: schedules.LinearVP,
        ScheduleKind.SUBVP: schedules.SubVP,
        ScheduleKind.VE: schedules.VE,
        ScheduleKind.EDM: schedules.EDM,
        ScheduleKind.FLOW: schedules.FlowMatching,
    }[kind]


def schedule_parameters(kind: ScheduleKind, betas: Betas | None) -> tuple[str, ...]:
    """The config keys of a kind of schedule (besides kind and betas)."""
    if kind is ScheduleKind.INSDEL:
        return ("T", "survival", "insert", "replace")
    if kind.stepped:
        linear = ("beta_start", "beta_end") if betas is Betas.LINEAR else ()
        return ("T", *linear, *(("bands",) if kind is ScheduleKind.D3PM_BANDED else ()))
    if kind is ScheduleKind.MASKED:
        return ("masking", "exponent", "eps")
    if kind in (ScheduleKind.NONE, ScheduleKind.FLOW):
        return ()
    sigmas = kind in (ScheduleKind.VE, ScheduleKind.EDM)
    return ("sigma_min", "sigma_max") if sigmas else ("beta_min", "beta_max")


def _default_betas(kind: ScheduleKind) -> Betas:
    if kind.d3pm:
        return Betas(discrete.default_betas(kind.value[len("d3pm_") :]).value)
    return Betas.LINEAR


@dataclass(frozen=True)
class ScheduleConfig:
    """The ``[schedule]`` section. Parameters left out take the defaults of the process's own
    constructor (EDM: sigma 0.002 to 80; VE: 0.01 to 50; VP: beta 0.1 to 20; DDPM: T = 1000,
    betas 1e-4 to 0.02; D3PM: T = 1000 and each kind's usual betas; masked: linear masking;
    insdel: T = 32, cosine survival, insert 1, replace 0); a parameter of another kind is an
    error. ``d3pm_*`` kinds are discrete processes over the data's categories, ``masked`` is
    masked diffusion in continuous time, ``insdel`` inserts and deletes tokens (sequences of
    varying length), ``none`` the autoregressive baseline's absence of a process."""

    kind: ScheduleKind = ScheduleKind.DISCRETE_VP
    betas: Betas | None = None  # discrete_vp: linear or cosine; d3pm_*: also mutual_info
    T: int | None = None
    beta_start: float | None = None
    beta_end: float | None = None
    beta_min: float | None = None
    beta_max: float | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    bands: int | None = None  # d3pm_banded: how many neighbouring levels a step may reach
    # masked: alpha(t) linear, cosine, polynomial (1 - t^exponent) or loglinear (alpha_1 = eps)
    masking: discrete.Masking | None = None
    exponent: float | None = None
    eps: float | None = None
    # insdel: the survival curve of data tokens, noise tokens inserted per data token
    # deleted, and the probability that a kept token is redrawn at a step
    survival: discrete.Survival | None = None
    insert: float | None = None
    replace: float | None = None

    def __post_init__(self) -> None:
        kind = ScheduleKind.parse(self.kind)
        object.__setattr__(self, "kind", kind)
        if not kind.stepped and self.betas is not None:
            raise ValueError(
                f"schedule.betas is a parameter of 'discrete_vp' and the d3pm kinds, not of "
                f"{kind.value!r}"
            )
        betas = Betas.parse(self.betas or _default_betas(kind)) if kind.stepped else None
        if kind is ScheduleKind.DISCRETE_VP and betas is Betas.MUTUAL_INFO:
            raise ValueError("schedule.betas = 'mutual_info' is for the d3pm kinds")
        object.__setattr__(self, "betas", betas)
        own = schedule_parameters(kind, betas)
        defaults = inspect.signature(_constructor(kind, betas)).parameters
        for f in dataclasses.fields(self)[2:]:
            value = getattr(self, f.name)
            if f.name in own and value is None:
                object.__setattr__(self, f.name, defaults[f.name].default)
            elif f.name not in own and value is not None:
                name = kind.value + (f" with betas = {betas.value!r}" if betas else "")
                raise ValueError(
                    f"schedule.{f.name} is not a parameter of schedule.kind = {name} (its "
                    f"parameters: {', '.join(own)})"
                )

    @property
    def discrete(self) -> bool:
        return self.kind.discrete

    def build(
        self, categories: int | None = None
    ) -> Schedule | discrete.DiscreteProcess | discrete.MaskedProcess | None:
        """The schedule these parameters describe (its constructor checks their values); a
        discrete process over ``categories`` values."""
        values = {name: getattr(self, name) for name in schedule_parameters(self.kind, self.betas)}
        if not self.discrete:
            return _constructor(self.kind, self.betas)(**values)
        if categories is None:
            raise ValueError(f"schedule.kind = {self.kind.value!r} needs the data's categories")
        if self.kind.d3pm:
            values["betas"] = self.betas.value
        return _constructor(self.kind, self.betas)(categories, **values)


class _Typed:
    """A section whose typed choices are parsed at construction (from their names too)."""

    section = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            kind, value = _value_type(hints[f.name]), getattr(self, f.name)
            if hasattr(kind, "parse") and value is not None:
                object.__setattr__(self, f.name, kind.parse(value, f"{self.section}.{f.name}"))


@dataclass(frozen=True)
class LossConfig(_Typed):
    """The ``[loss]`` section (see ``rediff.losses.Objective``)."""

    section = "loss"

    kind: Loss = Loss.DENOISING
    weighting: Weighting = Weighting.SIMPLE
    time_sampler: TimeSampler = TimeSampler.UNIFORM
    vlb_weight: float = 1e-3  # hybrid: denoising + vlb_weight * vlb
    variance: ReverseVariance = ReverseVariance.BETA  # vlb / hybrid: the reverse variance
    probes: int = 1  # sliced_sm
    probe: Probe = Probe.RADEMACHER  # sliced_sm
    # discrete_hybrid: the bound + ce_weight x the cross-entropy on x0 (Austin et al.'s
    # lambda = 0.001 on their per-step loss is 0.001 T here: 1 for T = 1000)
    ce_weight: float = 1.0
    # masked: one draw of the ELBO per sample by the number masked (count: bounded weights)
    # or by the time (time: MDLM's uniform t, heavy-tailed weights)
    mask_draws: discrete.MaskDraws = discrete.MaskDraws.COUNT


class Device(Choice, noun="train.device"):
    AUTO = "auto"  # cuda if available
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class TrainConfig(_Typed):
    """The ``[train]`` section."""

    section = "train"

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
    device: Device = Device.AUTO
    precision: Precision = Precision.FP32  # bf16: autocast around the network
    channels_last: bool = False  # images in channels-last memory format (GPU tensor cores)
    compile: bool = False  # torch.compile the network
    # torch's CPU threads per process (0: torch's default, one per core). Several processes on
    # few cores (torchrun, or other jobs) are much faster with 1 each: measured ~10x on a busy
    # 2-core machine
    threads: int = 0
    # a run directory whose EMA weights start this run (fine-tuning: e.g. loss.kind = "dsm2"
    # from a first-order run); the networks must be the same. "" starts from scratch
    init: str = ""


@dataclass(frozen=True)
class SampleConfig:
    """The ``[sample]`` section: the sampler of the training's sample grids, and what
    ``rediff sample`` / ``eval`` use when not told (default: the budget's choice,
    ``rediff.samplers.default(steps)``, or ancestral for a discrete process)."""

    sampler: str | None = None
    steps: int = 20
    n: int = 2000


_AT_LEAST_ONE = (lambda v: v >= 1, ">= 1")
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")

#: the range of every numeric option (the schedule's parameters are checked by the schedule)
RANGES = {
    "data.n": _AT_LEAST_ONE,
    "data.image_size": _NON_NEGATIVE,
    "data.channels": (lambda v: v in (1, 3), "1 or 3"),
    "data.length": (lambda v: v >= 2, ">= 2"),
    "model.time_scale": _POSITIVE,
    "model.sigma_data": _POSITIVE,
    "model.width": _AT_LEAST_ONE,
    "model.depth": _AT_LEAST_ONE,
    "model.num_classes": _NON_NEGATIVE,
    "model.dropout": _FRACTION,
    "loss.vlb_weight": _NON_NEGATIVE,
    "loss.probes": _AT_LEAST_ONE,
    "loss.ce_weight": _NON_NEGATIVE,
    "model.heads": _AT_LEAST_ONE,
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
    "train.threads": _NON_NEGATIVE,
    "sample.steps": _AT_LEAST_ONE,
    "sample.n": _AT_LEAST_ONE,
}


@dataclass(frozen=True)
class Config:
    """A whole run's configuration; construction checks every range and combination."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        if self.sample.sampler is None:  # each family's default (continuous: by budget, None)
            default = sampler_registry(self).DEFAULT
            object.__setattr__(self, "sample", dataclasses.replace(self.sample, sampler=default))
        for key, (ok, text) in RANGES.items():
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if not (math.isfinite(value) and ok(value)):
                raise ValueError(f"{key} must be {text}, got {value!r}")
        _check_combinations(self)
        if self.sample.sampler is not None:  # a name of the registry, or an error
            sampler_registry(self).get(self.sample.sampler)

    @property
    def classifier(self) -> bool:
        """Whether this run trains a noise-conditional classifier (not a denoiser)."""
        return self.loss.kind is Loss.CLASSIFIER


def sampler_registry(config: Config):
    """The samplers a run of ``config`` draws with: ``rediff.samplers``, for a discrete or
    masked process ``rediff.discrete.sampling``, for the autoregressive baseline and
    insertion/deletion the ``SAMPLERS`` of ``rediff.discrete.autoregressive`` and
    ``insdel_model`` (each has ``get(name)`` and a ``DEFAULT``)."""
    if config.schedule.kind is ScheduleKind.NONE:
        return discrete.autoregressive.SAMPLERS
    if config.schedule.kind is ScheduleKind.INSDEL:
        return discrete.insdel_model.SAMPLERS
    return discrete.sampling if config.schedule.discrete else samplers


#: the NetKind field that builds each form of network a model over categories needs
_FORMS = {"discrete": "discrete", "causal": "autoregressive", "insertion/deletion": "insdel"}


def _form(kind: ScheduleKind) -> str:
    """The form of network a discrete schedule kind needs."""
    if kind is ScheduleKind.NONE:
        return "causal"
    return "insertion/deletion" if kind is ScheduleKind.INSDEL else "discrete"


def _check_discrete(config: Config) -> None:
    """A discrete process trains with a discrete loss and a net that has a discrete form."""
    schedule, loss = config.schedule, config.loss.kind
    if loss not in schedule.kind.losses:
        valid = ", ".join(repr(k.value) for k in schedule.kind.losses)
        raise ValueError(
            f"loss.kind = {loss.value!r} does not train schedule.kind = "
            f"{schedule.kind.value!r}; use {valid}"
        )
    if schedule.kind.d3pm and config.sample.steps > schedule.T:
        raise ValueError(
            f"sample.steps = {config.sample.steps} exceeds schedule.T = {schedule.T}: a "
            "discrete sampler takes at most one step per step of the process"
        )
    if schedule.discrete and config.model.learned_variance:
        raise ValueError("model.learned_variance is for DDPM's Gaussian steps, not a d3pm process")
    form = _form(schedule.kind)
    if schedule.discrete and getattr(config.model.net, _FORMS[form]) is None:
        nets = [n for n, k in NETS.items() if getattr(k, _FORMS[form]) is not None]
        raise ValueError(
            f"model.net = {config.model.net.name!r} has no {form} form; use one of "
            f"{', '.join(map(repr, nets))}"
        )
    variable = config.data.kind.variable_length
    if variable and schedule.kind is not ScheduleKind.INSDEL:
        raise ValueError(
            f"data.kind = {config.data.kind.name!r} gives sequences of varying length, which "
            "only schedule.kind = 'insdel' models (with loss.kind = 'insdel')"
        )
    if not schedule.discrete and config.model.net.denoiser is None:
        raise ValueError(
            f"model.net = {config.model.net.name!r} serves discrete processes only (a d3pm "
            "schedule.kind)"
        )
    if config.classifier and config.model.net.classifier is None:
        nets = [n for n, k in NETS.items() if k.classifier is not None]
        raise ValueError(
            f"model.net = {config.model.net.name!r} has no classifier form; use one of "
            f"{', '.join(map(repr, nets))}"
        )


def _check_combinations(config: Config) -> None:
    """Refuse options that cannot train together (those that need the data are checked when
    the run starts)."""
    _check_discrete(config)
    dropout, classes = config.train.label_dropout, config.model.num_classes
    if dropout and not classes:
        raise ValueError(
            "train.label_dropout needs a class-conditional model (model.num_classes > 0)"
        )
    if config.classifier:
        if classes < 2:
            raise ValueError(
                f"loss.kind = 'classifier' needs model.num_classes >= 2, got {classes}"
            )
        if dropout:
            raise ValueError("a classifier needs every label: set train.label_dropout = 0")
        if config.train.sample_every:
            raise ValueError("a classifier draws no samples: set train.sample_every = 0")


#: train options a run may resume with other values: how a step is computed, how long the
#: run goes and how often it logs, samples and checkpoints (not what a step computes)
MAY_CHANGE_ON_RESUME = (
    "steps",
    "accumulate",
    "device",
    "compile",
    "channels_last",
    "threads",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "sample_every",
)


def differences(run: Config, now: Config) -> list[str]:
    """The options (``section.key``) in which two configs differ beyond what a resumed run
    may change (``MAY_CHANGE_ON_RESUME`` and the ``[sample]`` section of the sample grids),
    each as "key: <run's value> in the run, <value> now"."""
    found = []
    for section in dataclasses.fields(Config):
        a, b = getattr(run, section.name), getattr(now, section.name)
        if section.name == "sample":
            continue
        if not dataclasses.is_dataclass(a):
            if a != b:
                found.append(f"{section.name}: {a!r} in the run, {b!r} now")
            continue
        for f in dataclasses.fields(a):
            if section.name == "train" and f.name in MAY_CHANGE_ON_RESUME:
                continue
            x, y = getattr(a, f.name), getattr(b, f.name)
            if x != y:
                found.append(f"{section.name}.{f.name}: {_shown(x)} in the run, {_shown(y)} now")
    return found


def _shown(value: Any) -> str:
    return repr(str(value)) if hasattr(type(value), "parse") else repr(value)


# ---- reading and writing ---------------------------------------------------------------------


def _value_type(hint: Any) -> Any:
    """The type a field's annotation asks for (``X | None`` and ``X | str``: X)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return next((a for a in options if a is not str), str)
    return hint


def _check_value(where: str, value: Any, kind: type) -> Any:
    """``value`` as the field's type: parsed for typed choices, checked for plain types."""
    if hasattr(kind, "parse"):
        if not isinstance(value, (str, kind)):
            raise ValueError(f"{where} must be a name (a string), got {value!r}")
        return kind.parse(value, where)
    if typing.get_origin(kind) is tuple:  # a TOML array of one type
        item = typing.get_args(kind)[0]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be an array like [1, 2], got {value!r}")
        return tuple(_check_value(f"{where}[{i}]", v, item) for i, v in enumerate(value))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        hint = f" (quote text in --set: {where}='\"{value}\"')" if kind is str else ""
        raise ValueError(f"{where} must be of type {kind.__name__}, got {value!r}{hint}")
    return value


def _build(cls: type, values: dict[str, Any], where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in {where or 'the top level'}; valid keys: {sorted(names)}"
        )
    kwargs = {}
    for name, value in values.items():
        kind = _value_type(hints[name])
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(kind) and not hasattr(kind, "parse"):  # a section
            if not isinstance(value, dict):
                raise ValueError(f"[{path}] must be a table, got {value!r}")
            kwargs[name] = _build(kind, value, path)
        else:
            kwargs[name] = _check_value(path, value, kind)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` with the value in TOML syntax (3e-4, "cosine", true); a bare word
    that is not TOML (--set data.path=cifar_png) is taken as a string."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value (e.g. train.lr=3e-4), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"] if raw else ""
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's tables, or a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a TOML config (defaults where keys are absent) and apply ``section.key=value``
    overrides; the result is checked (``Config``)."""
    values = read_toml(path) if path is not None else {}
    for text in overrides:
        keys, value = _parse_override(text)
        table = values
        for key in keys[:-1]:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise ValueError(f"--set {text}: {key} is not a section")
        table[keys[-1]] = value
    return from_values(values)


def from_values(values: dict[str, Any]) -> Config:
    """The Config of TOML tables (as ``load_config`` reads them), checked."""
    return _build(Config, values, "")


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) or hasattr(type(value), "parse"):
        text = str(value)
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def to_toml(config: Config) -> str:
    """The config as TOML (written to a run directory, read back by ``load_config``); options
    that do not apply (None) are left out."""
    lines = [f"seed = {config.seed}"]
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        lines.append(f"\n[{section.name}]")
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if v is not None:
                lines.append(f"{f.name} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"
