"""The training loop: data -> denoising loss -> AdamW (warm-up, clipping) -> EMA, with a run
directory that survives interruption.

Run directory: ``config.toml``, ``model.safetensors``, ``ema.safetensors``,
``train_state.pt`` (optimizer state, step, RNG states; loaded with ``weights_only=True``),
``metrics.csv`` and ``loss.png`` (written at the end). Every file is written atomically, and
one torch.Generator drives data order, times and noise, so a resumed run continues exactly
where it stopped.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rediff import data, losses
from rediff._io import atomic_save_tensors, atomic_write, load_tensors
from rediff._tensor import Tensor, check_finite
from rediff.model import DiffusionModel
from rediff.nets import MLP, UNet
from rediff.plots import save_loss_curve
from rediff.training.config import Config, load_config, to_toml
from rediff.training.ema import EMA

STATE = "train_state.pt"


def build_model(config: Config, dim_or_shape: tuple[int, ...]) -> DiffusionModel:
    """The DiffusionModel a config describes, for data of shape [*dim_or_shape]."""
    m = config.model
    classes = m.num_classes or None
    if m.net == "mlp":
        net = MLP(
            math.prod(dim_or_shape),
            m.width,
            m.depth,
            time_scale=m.time_scale,
            num_classes=classes,
        )
    elif m.net == "unet_digits":
        net = UNet.digits(time_scale=m.time_scale, num_classes=classes)
    else:
        raise ValueError(f"unknown model.net {m.net!r}; valid: 'mlp', 'unet_digits'")
    return DiffusionModel(net, config.schedule.build(), m.target, m.time_input, m.sigma_data)


def load_data(config: Config) -> tuple[Tensor, Tensor | None]:
    """Training data [N, *D] (and labels [N] for class-conditional models)."""
    d = config.data
    if d.kind == "toy":
        x = data.toy(d.name, d.n, generator=torch.Generator().manual_seed(config.seed))
        labels = None
    elif d.kind == "digits":
        x, labels = data.load_digits()
    else:
        raise ValueError(f"unknown data.kind {d.kind!r}; valid: 'toy', 'digits'")
    check_finite("training data", x)
    return x, (labels if config.model.num_classes else None)


def _save(run: Path, model, ema: EMA, optimizer, step: int, generator) -> None:
    atomic_save_tensors(model.state_dict(), run / "model.safetensors")
    atomic_save_tensors(ema.model.state_dict(), run / "ema.safetensors")
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    atomic_write(run / STATE, lambda tmp: torch.save(state, tmp))


def _resume(run: Path, config: Config, model, ema: EMA, optimizer, generator) -> int:
    saved = load_config(run / "config.toml")
    if saved != config:
        raise ValueError(
            f"{run} holds a run with a different config; resume with the same config (see "
            f"{run / 'config.toml'}) or start a new run directory"
        )
    model.load_state_dict(load_tensors(run / "model.safetensors"))
    ema.model.load_state_dict(load_tensors(run / "ema.safetensors"))
    state = torch.load(run / STATE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def _prepare_run(run: Path, config: Config, resume: bool) -> bool:
    """Create the run directory; True if there is a checkpoint to resume from. Refuses to
    overwrite an existing run unless resuming, before any file is changed."""
    has_state = (run / STATE).is_file()
    if has_state and not resume:
        raise FileExistsError(
            f"{run} already holds a run; pass resume=True (--resume) or use a new folder"
        )
    run.mkdir(parents=True, exist_ok=True)
    if not has_state:
        (run / "config.toml").write_text(to_toml(config))
    return has_state


def load_run(run_dir: str | Path, weights: str = "ema") -> tuple[Config, DiffusionModel]:
    """A trained run's config and model (``weights``: 'ema' or 'model'), loaded without
    pickle."""
    run = Path(run_dir)
    if not (run / "config.toml").is_file():
        raise FileNotFoundError(f"{run} is not a run directory (no config.toml)")
    config = load_config(run / "config.toml")
    x, _ = load_data(config)
    model = build_model(config, tuple(x.shape[1:]))
    state = load_tensors(run / f"{weights}.safetensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"{run}/{weights}.safetensors does not fit the run's config: {error}"
        ) from None
    return config, model.eval()


def train(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> DiffusionModel:
    """Train per ``config`` into ``run_dir``; return the EMA model.

    ``stop_after`` ends the run after that many total steps (as an interruption would), with
    a checkpoint; ``resume=True`` continues from the last checkpoint.
    """
    run = Path(run_dir)
    x, labels = load_data(config)
    torch.manual_seed(config.seed)
    model = build_model(config, tuple(x.shape[1:]))
    ema = EMA(model, config.train.ema_half_life)
    t = config.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    step = (
        _resume(run, config, model, ema, optimizer, generator)
        if _prepare_run(run, config, resume)
        else 0
    )
    last = min(t.steps, stop_after) if stop_after is not None else t.steps
    log = (run / "metrics.csv").open("a", newline="")
    writer = csv.writer(log)
    if step == 0:
        writer.writerow(["step", "loss", "lr"])
    bar = tqdm(total=last, initial=step, desc="train", disable=not progress)
    while step < last:
        idx = torch.randint(x.shape[0], (t.batch_size,), generator=generator)
        cond = {} if labels is None else {"labels": labels[idx]}
        lr = t.lr * min(1.0, (step + 1) / max(t.warmup, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = losses.denoising_loss(
            model,
            x[idx],
            weighting=config.loss.weighting,
            time_sampler=config.loss.time_sampler,
            generator=generator,
            **cond,
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {float(loss)} at step {step}; the last checkpoint is kept. Lower "
                "train.lr or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        ema.update(model, t.batch_size)
        step += 1
        if step % t.log_every == 0 or step == last:
            writer.writerow([step, f"{loss.item():.6g}", f"{lr:.3g}"])
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % t.checkpoint_every == 0 or step == last:
            _save(run, model, ema, optimizer, step, generator)
        bar.update(1)
    bar.close()
    log.close()
    save_loss_curve(run / "metrics.csv", run / "loss.png")
    return ema.model
