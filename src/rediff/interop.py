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

diffusers is an optional dependency (``pip install rediff[diffusers]``), imported only here.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from rediff._io import load_tensors
from rediff._tensor import Tensor
from rediff.model import DiffusionModel, TimeInput
from rediff.parametrization import Target
from rediff.schedules import DiscreteVP

#: diffusers' prediction_type -> rediff's target
TARGETS = {"epsilon": Target.EPS, "sample": Target.X0, "v_prediction": Target.V}
#: alpha_bar_T kept for a zero-terminal-SNR schedule (diffusers' DDIM / Euler use the same)
ZERO_SNR_ALPHA_BAR = 2.0**-24
UNETS = ("UNet2DModel",)


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


def schedule(config: dict) -> DiscreteVP:
    """The rediff schedule of a diffusers scheduler config (DDPM-type schedulers)."""
    name = config.get("_class_name", "")
    if "FlowMatch" in name:
        raise ValueError(f"{name} folders (flow matching) are not read yet; DDPM-type only")
    for key in ("clip_sample", "thresholding"):
        if config.get(key):
            warnings.warn(
                f"the scheduler config sets {key}; rediff does not clip x0 unless asked "
                "(rediff.thresholding, rediff sample --clip-x0 / --dynamic-threshold)",
                stacklevel=3,
            )
    return DiscreteVP(tuple(betas(config).tolist()))


class DiffusersUNet(nn.Module):
    """A diffusers UNet called as rediff nets are: ``net(x, time, labels=None)`` with
    ``time`` the timestep index (float: fractional between steps) -> the UNet's ``sample``."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, time: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.unet(x, time, class_labels=labels).sample


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


def load_diffusers(path: str | Path) -> DiffusionModel:
    """A diffusers folder as a rediff DiffusionModel (a Denoiser): every rediff sampler,
    guidance and likelihood works on it."""
    unet_dir, scheduler_dir = folders(path)
    config = _read_json(scheduler_dir / "scheduler_config.json")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in TARGETS:
        raise ValueError(
            f"prediction_type {prediction!r} in {scheduler_dir}; rediff reads {', '.join(TARGETS)}"
        )
    unet = _unet(unet_dir)
    learned = config.get("variance_type") == "learned_range"
    net = DiffusersUNet(unet)
    return DiffusionModel(net, schedule(config), TARGETS[prediction], TimeInput.STEP, 0.5, learned)


__all__ = ["DiffusersUNet", "betas", "folders", "load_diffusers", "schedule"]
