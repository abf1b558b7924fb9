"""diffusers model folders as rediff Denoisers, read offline.

    model = rediff.interop.load_diffusers("path/to/ddpm-folder")    # a DiffusionModel
    x = rediff.sample(model, (16, 3, 32, 32), sampler="dpm++2m", steps=20).x

A folder is a pipeline folder (``model_index.json`` with ``unet/`` and ``scheduler/``) or a
bare ``unet/`` + ``scheduler/`` pair. The scheduler config becomes the exact rediff schedule
(DDPM betas: ``linear``, ``scaled_linear``, ``squaredcos_cap_v2``, ``sigmoid`` or
``trained_betas``, with ``rescale_betas_zero_snr``) and ``prediction_type`` the target
(``epsilon`` -> eps, ``sample`` -> x0, ``v_prediction`` -> v); the UNet (``UNet2DModel``) is
called as diffusers calls it, with the timestep index T t - 1 (fractional between steps:
``TimeInput.STEP``). What rediff cannot honour exactly is reported with a warning, never
dropped silently: ``clip_sample`` and ``thresholding`` (rediff's own are
``rediff.thresholding``), and zero terminal SNR (alpha_bar_T = 0 has an infinite noise
level; the last step keeps alpha_bar_T = 2^-24, as diffusers' DDIM and Euler schedulers do).

Flow-matching folders (``FlowMatchEulerDiscreteScheduler``) become ``FlowMatching`` on
diffusers' range t = sigma in [1/T, 1] with the ``velocity`` target (eps - x0), the UNet
called with sigma T; ``shift`` and dynamic shifting (``use_dynamic_shifting``, Flux's
``base_shift`` / ``max_shift`` over the sequence length) are sampling-grid settings
(``sampling_options``: diffusers' own grid, with rediff's Euler equal to its step).

rediff runs with ``model.net = "diffusers_unet2d"`` (a UNet2DModel with its own config keys)
train like any run and are written back as DDPMPipeline folders by ``export_diffusers``
(``rediff export RUN_DIR --diffusers OUT``).

diffusers is an optional dependency (``pip install rediff[diffusers]``), imported only here.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from rediff._io import load_tensors
from rediff._tensor import Tensor
from rediff.model import NULL_LABEL, DiffusionModel, TimeInput
from rediff.parametrization import Target
from rediff.schedules import DiscreteVP, FlowMatching, Schedule

#: diffusers' prediction_type -> rediff's target
TARGETS = {"epsilon": Target.EPS, "sample": Target.X0, "v_prediction": Target.V}
PREDICTION_TYPES = {target: name for name, target in TARGETS.items()}
#: alpha_bar_T kept for a zero-terminal-SNR schedule (diffusers' DDIM / Euler use the same)
ZERO_SNR_ALPHA_BAR = 2.0**-24
UNETS = ("UNet2DModel",)
#: flow-matching scheduler settings rediff does not reproduce (refused, not dropped)
FLOW_UNREAD = (
    "invert_sigmas",
    "shift_terminal",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
)


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise ImportError(
            "reading diffusers folders needs diffusers: pip install 'rediff[diffusers]'"
        ) from None
    return diffusers


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a diffusers folder needs it")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None


def folders(path: str | Path) -> tuple[Path, Path]:
    """The ``unet/`` and ``scheduler/`` folders of a pipeline folder or a bare pair, or a
    FileNotFoundError naming what is missing."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    unet, scheduler = root / "unet", root / "scheduler"
    missing = [p.name + "/" for p in (unet, scheduler) if not p.is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{root} has no {' or '.join(missing)}: a diffusers folder holds unet/ and "
            "scheduler/ (with model_index.json for a pipeline)"
        )
    return unet, scheduler


def betas(config: dict) -> Tensor:
    """DDPM's betas [T] (float64) of a diffusers scheduler config."""
    T = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if config.get("trained_betas") is not None:
        out = torch.tensor(config["trained_betas"], dtype=torch.float64)
    else:
        kind = config.get("beta_schedule", "linear")
        if kind == "linear":
            out = torch.linspace(start, end, T, dtype=torch.float64)
        elif kind == "scaled_linear":  # latent diffusion: linear in sqrt(beta)
            out = torch.linspace(math.sqrt(start), math.sqrt(end), T, dtype=torch.float64) ** 2
        elif kind == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, eq. 17
            out = torch.tensor(DiscreteVP.cosine(T, s=0.008, max_beta=0.999).betas)
        elif kind == "sigmoid":  # GeoDiff
            out = (
                torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (end - start) + start
            )
        else:
            raise ValueError(
                f"unknown beta_schedule {kind!r} in the scheduler config; rediff reads linear, "
                "scaled_linear, squaredcos_cap_v2, sigmoid or trained_betas"
            )
    if config.get("rescale_betas_zero_snr"):
        out = _zero_terminal_snr(out)
    return out


def _zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2024 (algorithm 1): sqrt(alpha_bar) shifted and scaled so that it ends at 0
    and keeps its first value; alpha_bar_T is then set to ZERO_SNR_ALPHA_BAR (reported)."""
    root = torch.cumprod(1.0 - betas, 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alpha_bar = root.square()
    alpha_bar[-1] = ZERO_SNR_ALPHA_BAR
    warnings.warn(
        "rescale_betas_zero_snr: alpha_bar_T = 0 has an infinite noise level; rediff keeps "
        "alpha_bar_T = 2^-24 for the last step",
        stacklevel=3,
    )
    ratios = alpha_bar[1:] / alpha_bar[:-1]
    return torch.cat([1.0 - alpha_bar[:1], 1.0 - ratios])


def is_flow(config: dict) -> bool:
    """Whether a scheduler config is a flow-matching one (FlowMatch*Scheduler)."""
    return "FlowMatch" in config.get("_class_name", "")


def _flow_schedule(config: dict) -> FlowMatching:
    """Flow matching on diffusers' sigma range [1/T, 1]: the network sees sigma T, and
    FlowMatchEulerDiscreteScheduler starts at sigma = 1 (pure noise)."""
    unread = [key for key in FLOW_UNREAD if config.get(key)]
    if unread:
        raise ValueError(
            f"the scheduler config sets {', '.join(unread)}; rediff reads flow-matching "
            "configs with shift or dynamic shifting only (use the flow grid of "
            "rediff.interop.sampling_options otherwise)"
        )
    if config.get("stochastic_sampling"):
        warnings.warn(
            "stochastic_sampling: rediff's euler is the deterministic flow Euler step; "
            "sampler='ddpm' draws stochastically",
            stacklevel=3,
        )
    return FlowMatching(t_min=1.0 / int(config.get("num_train_timesteps", 1000)), t_max=1.0)


def flow_shift(config: dict, shape: tuple[int, ...]) -> float:
    """SD3's time shift s of a flow-matching config for samples of ``shape`` (C, H, W):
    ``shift``, or with ``use_dynamic_shifting`` s = exp(mu) ('exponential') or mu ('linear'),
    mu linear in the sequence length between (base_image_seq_len, base_shift) and
    (max_image_seq_len, max_shift) as in Flux; a UNet's sequence length is H W."""
    if not config.get("use_dynamic_shifting"):
        return float(config.get("shift", 1.0))
    length = math.prod(shape[-2:])
    lo, hi = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    low_shift, high_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    mu = low_shift + (high_shift - low_shift) * (length - lo) / (hi - lo)
    return math.exp(mu) if config.get("time_shift_type", "exponential") == "exponential" else mu


def sampling_options(config: dict, shape: tuple[int, ...]) -> dict:
    """``rediff.sample`` options reproducing the folder's own scheduler: for flow matching
    FlowMatchEulerDiscreteScheduler's grid (uniform from sigma = 1 to the shifted 1/T, then
    shifted again, as diffusers does) with rediff's Euler; none for DDPM-type folders."""
    if not is_flow(config):
        return {}
    first = 1.0 / int(config.get("num_train_timesteps", 1000))
    if not config.get("use_dynamic_shifting"):  # diffusers shifts its sigma_min at creation
        s = float(config.get("shift", 1.0))
        first = s * first / (1.0 + (s - 1.0) * first)
    shift = flow_shift(config, shape)
    return {"sampler": "euler", "spacing": "uniform", "t_min": first, "shift": shift}


def schedule(config: dict) -> Schedule:
    """The rediff schedule of a diffusers scheduler config: DiscreteVP for DDPM-type
    schedulers, FlowMatching (t in [1/T, 1]) for flow-matching ones."""
    if is_flow(config):
        return _flow_schedule(config)
    for key in ("clip_sample", "thresholding"):
        if config.get(key):
            warnings.warn(
                f"the scheduler config sets {key}; rediff does not clip x0 unless asked "
                "(rediff.thresholding, rediff sample --clip-x0 / --dynamic-threshold)",
                stacklevel=3,
            )
    return DiscreteVP(tuple(betas(config).tolist()))


class DiffusersUNet(nn.Module):
    """A diffusers UNet called as rediff nets are: ``net(x, time, labels=None)`` -> the
    UNet's ``sample``, with ``time`` x ``time_scale`` as its timestep (DDPM folders: the
    timestep index, fractional between steps, scale 1; flow folders: sigma T, scale T).
    Built by rediff with ``num_classes`` > 0, its class embedding has one more row for
    rediff's null label (no labels, or ``NULL_LABEL``: classifier-free guidance)."""

    def __init__(self, unet: nn.Module, time_scale: float = 1.0, num_classes: int = 0) -> None:
        super().__init__()
        self.unet, self.time_scale, self.num_classes = unet, time_scale, num_classes

    def forward(self, x: Tensor, time: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.num_classes:
            if labels is None:
                labels = torch.full((x.shape[0],), NULL_LABEL, device=x.device)
            labels = torch.where(labels == NULL_LABEL, self.num_classes, labels)
        return self.unet(x, time * self.time_scale, class_labels=labels).sample


def build_unet2d(
    shape: tuple[int, ...],
    *,
    outputs: int = 1,
    num_classes: int = 0,
    time_scale: float = 1.0,
    **config,
) -> DiffusersUNet:
    """A new diffusers UNet2DModel for images of ``shape`` (C, H, H) as a rediff net
    (``model.net = "diffusers_unet2d"``): ``config`` holds UNet2DModel's own keys
    (block_out_channels, layers_per_block, down/up_block_types, norm_num_groups, dropout);
    ``outputs`` = 2 doubles its output channels (learned variance)."""
    channels, size = shape[0], shape[-1]
    classes = {"num_class_embeds": num_classes + 1} if num_classes else {}
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    try:
        unet = _diffusers().UNet2DModel(
            sample_size=size,
            in_channels=channels,
            out_channels=channels * outputs,
            **classes,
            **settings,
        )
    except (ValueError, TypeError) as error:
        raise ValueError(f"model.net = 'diffusers_unet2d': {error}") from None
    return DiffusersUNet(unet, time_scale, num_classes)


def _unet(folder: Path) -> nn.Module:
    """The UNet of ``folder`` (config.json + diffusion_pytorch_model.safetensors), built from
    its config and loaded without network access."""
    config = _read_json(folder / "config.json")
    name = config.get("_class_name")
    if name not in UNETS:
        raise ValueError(f"{folder} holds a {name}; rediff reads {', '.join(UNETS)}")
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing (rediff reads safetensors weights only)")
    unet = getattr(_diffusers(), name).from_config(config)
    try:
        unet.load_state_dict(load_tensors(weights))
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise ValueError(f"{weights} does not fit {folder / 'config.json'}: {first}") from None
    return unet.eval()


def scheduler_config(path: str | Path) -> dict:
    """The scheduler config of a diffusers folder (see ``folders``)."""
    return _read_json(folders(path)[1] / "scheduler_config.json")


def load_diffusers(path: str | Path) -> DiffusionModel:
    """A diffusers folder as a rediff DiffusionModel (a Denoiser): every rediff sampler,
    guidance and likelihood works on it."""
    unet_dir, scheduler_dir = folders(path)
    config = scheduler_config(path)
    if is_flow(config):
        steps = float(config.get("num_train_timesteps", 1000))
        net = DiffusersUNet(_unet(unet_dir), time_scale=steps)
        return DiffusionModel(net, schedule(config), Target.VELOCITY, TimeInput.T)
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in TARGETS:
        raise ValueError(
            f"prediction_type {prediction!r} in {scheduler_dir}; rediff reads {', '.join(TARGETS)}"
        )
    unet = _unet(unet_dir)
    learned = config.get("variance_type") == "learned_range"
    net = DiffusersUNet(unet)
    return DiffusionModel(net, schedule(config), TARGETS[prediction], TimeInput.STEP, 0.5, learned)


def _check_exportable(model) -> None:
    """A ValueError unless DDPMPipeline can run ``model`` exactly."""
    if not (isinstance(model, DiffusionModel) and isinstance(model.net, DiffusersUNet)):
        net = getattr(model, "net", model)
        raise ValueError(
            f"this model's net is a {type(net).__name__}; only model.net = 'diffusers_unet2d' "
            "runs are written as diffusers folders"
        )
    if not isinstance(model.schedule, DiscreteVP):
        raise ValueError(
            "DDPMPipeline runs DDPM's integer steps: export needs schedule.kind = 'discrete_vp', "
            f"this run's schedule is {type(model.schedule).__name__}"
        )
    if model.time_input is not TimeInput.STEP or model.net.time_scale != 1.0:
        raise ValueError(
            "diffusers calls the UNet with the timestep index: export needs a run trained with "
            "model.time_input = 'step' and model.time_scale = 1"
        )
    if model.target not in PREDICTION_TYPES:
        raise ValueError(
            f"diffusers has no prediction_type for target {model.target.value!r}; train with "
            f"model.target = {' / '.join(repr(t.value) for t in PREDICTION_TYPES)}"
        )
    if model.net.num_classes:
        raise ValueError("DDPMPipeline is unconditional: a class-conditional run is not exported")


def export_diffusers(model: DiffusionModel, out: str | Path) -> Path:
    """Write the model of a ``diffusers_unet2d`` run (``rediff export`` passes its EMA
    weights) as a DDPMPipeline folder ``out``:
    ``unet/`` (UNet2DModel, safetensors), ``scheduler/`` (DDPMScheduler with the run's betas as
    trained_betas, its prediction_type, fixed_small or learned_range variance, no clipping,
    as rediff samples) and model_index.json. Written beside ``out`` and renamed into place,
    so a failed export leaves nothing half-written; ``out`` must not exist (or be empty)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists; export into a new folder")
    _check_exportable(model)
    diffusers = _diffusers()
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=model.schedule.num_steps,
        trained_betas=list(model.schedule.betas),
        prediction_type=PREDICTION_TYPES[model.target],
        variance_type="learned_range" if model.learned_variance else "fixed_small",
        clip_sample=False,
    )
    staging = out.with_name(f".{out.name}.export")
    shutil.rmtree(staging, ignore_errors=True)
    pipeline = diffusers.DDPMPipeline(unet=model.net.unet, scheduler=scheduler)
    pipeline.save_pretrained(staging, safe_serialization=True)
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return out


__all__ = [
    "DiffusersUNet",
    "betas",
    "build_unet2d",
    "export_diffusers",
    "flow_shift",
    "folders",
    "is_flow",
    "load_diffusers",
    "sampling_options",
    "schedule",
    "scheduler_config",
]
