"""The training loop: data -> objective -> AdamW (warm-up, clipping) -> EMA, with a run
directory that survives interruption, on one process or many (torchrun).

Run directory: ``config.toml``, ``model.safetensors`` and ``ema.safetensors`` (the latest
weights), ``checkpoints/step_*/`` (the last ``train.keep_checkpoints``: weights,
``train_state.pt`` with optimizer state, step and RNG states, and a manifest of checksums; see
``rediff.training.checkpoint``), ``metrics.csv``, ``samples/step_*.png`` (every
``train.sample_every`` steps) and ``loss.png``. Every file is written atomically, and one
torch.Generator drives data order, times, noise and probes, so a resumed run continues
exactly where it stopped.

Under ``torchrun --nproc_per_node N`` every process draws the same global batch and its random
inputs from that generator and trains on its own contiguous 1/N of it; DistributedDataParallel
averages the gradients, so N processes compute what one process computes with the same global
batch. Process 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rediff import data, losses, samplers
from rediff._io import atomic_write, in_run, load_tensors
from rediff._tensor import Tensor, check_finite
from rediff.evaluation import draw
from rediff.model import NULL_LABEL, DiffusionModel, NoisyClassifier
from rediff.nets import MLP, NoiseClassifier, UNet, accelerate
from rediff.nets.fast import check_precision
from rediff.plots import save_loss_curve, save_samples
from rediff.training import checkpoint
from rediff.training.config import (
    EXECUTION_OPTIONS,
    Config,
    check_ranges,
    load_config,
    run_identity,
    to_toml,
)
from rediff.training.ema import EMA

#: grey levels of each data kind's pixels (the VLB decoder's grid)
LEVELS = {"digits": 17}


def build_model(config: Config, dim_or_shape: tuple[int, ...]) -> DiffusionModel | NoisyClassifier:
    """The model a config describes, for data of shape [*dim_or_shape]: a DiffusionModel, or
    with ``loss.kind = "classifier"`` a NoisyClassifier (the same net names give the
    classifier of that size: an MLP, or the encoder half of the UNet preset)."""
    m = config.model
    if m.net != "mlp" and m.net not in PRESETS:
        valid = ", ".join(map(repr, ["mlp", *PRESETS]))
        raise ValueError(f"unknown model.net {m.net!r}; valid: {valid}")
    if config.loss.kind == "classifier":
        net = _classifier_net(m, dim_or_shape)
        return NoisyClassifier(net, config.schedule.build(), m.time_input, m.sigma_data)
    common = dict(
        time_scale=m.time_scale,
        num_classes=m.num_classes or None,
        outputs=2 if m.learned_variance else 1,
    )
    if m.net == "mlp":
        net = MLP(math.prod(dim_or_shape), m.width, m.depth, **common)
    else:
        net = PRESETS[m.net][0](dropout=m.dropout, **common)
        _check_shape(m.net, net, dim_or_shape)
    return DiffusionModel(
        net, config.schedule.build(), m.target, m.time_input, m.sigma_data, m.learned_variance
    )


#: model.net -> (denoiser preset, classifier preset) of the UNet sizes
PRESETS = {
    "unet_digits": (UNet.digits, NoiseClassifier.digits),
    "unet_cifar10": (UNet.cifar10, NoiseClassifier.cifar10),
}


def _check_shape(name: str, net, dim_or_shape: tuple[int, ...]) -> None:
    expected = (net.channels, net.resolution, net.resolution)
    if tuple(dim_or_shape) != expected:
        raise ValueError(
            f"model.net = {name!r} takes images {list(expected)}, but the data are "
            f"{list(dim_or_shape)}; pick the matching preset or resize the data"
        )


def _classifier_net(m, dim_or_shape: tuple[int, ...]):
    if m.num_classes < 2:
        raise ValueError(
            f"loss.kind = 'classifier' needs model.num_classes >= 2, got {m.num_classes}"
        )
    if m.net == "mlp":
        dim = math.prod(dim_or_shape)
        return MLP(dim, m.width, m.depth, time_scale=m.time_scale, out_features=m.num_classes)
    net = PRESETS[m.net][1](num_classes=m.num_classes, dropout=m.dropout, time_scale=m.time_scale)
    _check_shape(m.net, net, dim_or_shape)
    return net


def build_objective(config: Config) -> losses.Objective:
    """The training objective of ``config.loss`` (data-dependent decoder levels included)."""
    c = config.loss
    return losses.Objective(
        kind=c.kind,
        weighting=c.weighting,
        time_sampler=c.time_sampler,
        vlb_weight=c.vlb_weight,
        variance=c.variance,
        levels=LEVELS.get(config.data.kind, 256),
        probes=c.probes,
        probe=c.probe,
    )


def load_data(config: Config) -> tuple[Tensor, Tensor | None]:
    """Training data [N, *D] (and labels [N] for class-conditional models)."""
    d = config.data
    if d.kind == "toy":
        x = data.toy(d.name, d.n, generator=torch.Generator().manual_seed(config.seed))
        labels = None
    elif d.kind == "digits":
        x, labels = data.digits_split("train")
    elif d.kind == "images":
        x, labels = data.load_image_folder(d.path, d.image_size, d.channels)
    elif d.kind == "array":
        x, labels = data.load_array(d.path)
    else:
        raise ValueError(f"unknown data.kind {d.kind!r}; valid: 'toy', 'digits', 'images', 'array'")
    check_finite("training data", x)
    if d.flip and x.ndim != 4:
        raise ValueError(f"data.flip needs images [N, C, H, W]; the data are {list(x.shape)}")
    if not config.model.num_classes:
        return x, None
    if labels is None:
        raise ValueError(
            f"model.num_classes = {config.model.num_classes} needs labelled data; "
            f"data.kind = {d.kind!r} has no labels (set model.num_classes = 0)"
        )
    if int(labels.max()) >= config.model.num_classes:
        raise ValueError(
            f"the data have labels up to {int(labels.max())} but model.num_classes = "
            f"{config.model.num_classes}"
        )
    return x, labels


# ---- processes and devices -----------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` data-parallel processes (1: no torchrun)."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"  # where collectives' tensors live

    @property
    def writes(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def stop(self, here: bool) -> bool:
        """True on every process if process 0 says so (clocks differ between processes)."""
        if self.size == 1:
            return here
        flag = torch.tensor([float(here)], device=self.device)
        torch.distributed.broadcast(flag, 0)
        return bool(flag.item())

    def mean(self, value: Tensor) -> float:
        """The mean of a scalar over all processes (each holds its slice's loss)."""
        if self.size > 1:
            value = value.clone()
            torch.distributed.all_reduce(value)
        return float(value) / self.size


def _device(config: Config) -> torch.device:
    name = config.train.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device = 'cuda' but no CUDA device is available; use 'auto'")
    return torch.device(name)


def _join_world(device: torch.device) -> World:
    """Join torchrun's process group (gloo on CPU, nccl on GPU) when WORLD_SIZE > 1."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(torch.distributed.get_rank(), size, str(device))


def _process_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


def _training_view(model, config: Config, world: World):
    """The model the loss calls: the same parameters with the net accelerated (bf16 autocast,
    channels-last, compile: ``rediff.nets.accelerate``) and/or wrapped in
    DistributedDataParallel (state dicts and EMA keep using ``model``)."""
    t = config.train
    net = accelerate(
        model.net, precision=t.precision, channels_last=t.channels_last, compile=t.compile
    )
    if world.size > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)
    return model if net is model.net else model.with_net(net)


# ---- checkpoints ---------------------------------------------------------------------------


def _save(run: Path, model, ema: EMA, optimizer, step: int, generator, keep: int) -> None:
    """A checkpoint directory (``rediff.training.checkpoint``), then the run's top-level
    ``model.safetensors`` and ``ema.safetensors`` (what ``load_run`` and users read)."""
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    saved = checkpoint.save(run, step, model.state_dict(), ema.model.state_dict(), state, keep)
    for name in ("model.safetensors", "ema.safetensors"):
        atomic_write(in_run(run, name), lambda tmp, name=name: shutil.copyfile(saved / name, tmp))


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights, or a ValueError saying they do not fit the config."""
    try:
        model.load_state_dict(load_tensors(path))
    except RuntimeError as error:
        raise ValueError(
            f"{path} does not fit the run's config (was it written by another config?): {error}"
        ) from None


def _resume(run: Path, config: Config, model, ema: EMA, optimizer, generator) -> int:
    """Continue from the newest valid checkpoint (newer corrupt ones are skipped with a
    warning); returns its step."""
    saved = load_config(in_run(run, "config.toml"))
    if run_identity(saved) != run_identity(config):
        raise ValueError(
            f"{run} holds a run with a different config; resume with the same config (see "
            f"{run / 'config.toml'}; only train.{', '.join(EXECUTION_OPTIONS)} may differ) or "
            "start a new run directory"
        )
    latest = checkpoint.latest(run)
    _load_weights(model, latest / "model.safetensors")
    _load_weights(ema.model, latest / "ema.safetensors")
    state = checkpoint.load_state(latest)
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


#: what a run directory holds (``checkpoints/`` in ``rediff.training.checkpoint``)
RUN_FILES = (
    "config.toml",
    "model.safetensors",
    "ema.safetensors",
    "metrics.csv",
    "loss.png",
    "samples",
    checkpoint.CHECKPOINTS,
)


def _prepare_run(run: Path, config: Config, resume: bool, world: World) -> bool:
    """Create the run directory; True if there is a checkpoint to resume from. Refuses to
    overwrite an existing run unless resuming, or one whose files lead outside it (symbolic
    links), before any file is changed."""
    for name in RUN_FILES:
        in_run(run, name)
    has_state = bool(checkpoint.steps(run))
    if has_state and not resume:
        raise FileExistsError(
            f"{run} already holds a run; pass resume=True (--resume) or use a new folder"
        )
    if world.writes:
        run.mkdir(parents=True, exist_ok=True)
        if not has_state:
            path = in_run(run, "config.toml")
            atomic_write(path, lambda tmp: Path(tmp).write_text(to_toml(config)))
    world.barrier()
    return has_state


def load_run(
    run_dir: str | Path, weights: str = "ema"
) -> tuple[Config, DiffusionModel | NoisyClassifier]:
    """A trained run's config and model (``weights``: 'ema' or 'model'), loaded without
    pickle."""
    run = Path(run_dir)
    if not in_run(run, "config.toml").is_file():
        raise FileNotFoundError(f"{run} is not a run directory (no config.toml)")
    config = load_config(run / "config.toml")
    x, _ = load_data(config)
    model = build_model(config, tuple(x.shape[1:]))
    _load_weights(model, in_run(run, f"{weights}.safetensors"))
    return config, model.eval()


# ---- the loop ------------------------------------------------------------------------------


def _batch(x, labels, config: Config, objective, schedule, generator, world: World):
    """This process's slice of the global batch: data, random inputs, conditioning."""
    b = config.train.batch_size
    idx = torch.randint(x.shape[0], (b,), generator=generator)
    x0 = x[idx.to(x.device)]
    if config.data.flip:
        x0 = data.random_flip(x0, generator)
    draws = objective.draw(schedule, x0, generator)
    cond = {}
    if labels is not None:
        y = labels[idx.to(labels.device)]
        if config.train.label_dropout:  # classifier-free guidance's unconditional model
            dropped = torch.rand(b, generator=generator) < config.train.label_dropout
            y = torch.where(dropped.to(y.device), NULL_LABEL, y)
        cond = {"labels": y}
    mine = slice(world.rank * b // world.size, (world.rank + 1) * b // world.size)
    return _take((x0, draws, cond), mine)


def _take(batch, part: slice):
    """Samples ``part`` of a batch (x0, draws, cond): per-sample along dim 0 of each tensor,
    except the probes [n, B, *D] (dim 1)."""
    x0, draws, cond = batch
    draws = {k: (v[:, part] if k == "probes" else v[part]) for k, v in draws.items()}
    return x0[part], draws, {k: v[part] for k, v in cond.items()}


def _backward(view, objective, batch, parts: int, step: int) -> Tensor:
    """Gradients of the batch-mean loss of this process's slice, accumulated over ``parts``
    equal micro-batches (each loss / parts: the sum is the slice's mean), DDP's all-reduce on
    the last only. Returns the loss (detached)."""
    n = batch[0].shape[0] // parts
    ddp = isinstance(view.net, torch.nn.parallel.DistributedDataParallel)
    total = 0.0
    for k in range(parts):
        sync = ddp and k < parts - 1
        with view.net.no_sync() if sync else contextlib.nullcontext():
            x0, draws, cond = _take(batch, slice(k * n, (k + 1) * n))
            loss = objective(view, x0, draws, **cond)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {float(loss)} at step {step}; the last checkpoint is kept. "
                    "Lower train.lr or check the data"
                )
            (loss / parts).backward()
        total = total + loss.detach().float() / parts
    return total


@torch.no_grad()
def _sample_grid(ema_model: DiffusionModel, config: Config, shape, run: Path, step: int) -> None:
    """Samples from the EMA model at this step (fixed seed), as samples/step_XXXXXXX.png."""
    n = min(config.sample.n, 100) if len(shape) == 3 else config.sample.n
    generator = torch.Generator().manual_seed(config.seed)
    samples, _, _ = draw(
        ema_model, config, shape, n, config.sample.sampler, config.sample.steps, generator
    )
    in_run(run, "samples").mkdir(exist_ok=True)
    path = in_run(run, "samples", f"step_{step:07d}.png")
    title = f"step {step}: {config.sample.sampler}"
    atomic_write(path, lambda tmp: save_samples(samples, tmp, title))


class TrainingInterruptedError(RuntimeError):
    """Training stopped on SIGTERM or SIGINT, after writing a checkpoint of the last step."""

    def __init__(self, signal_name: str, step: int, run: Path) -> None:
        super().__init__(
            f"{signal_name} received: stopped at step {step} with a checkpoint in {run}; "
            "continue with --resume"
        )
        self.signal_name, self.step = signal_name, step
        self.exit_code = 128 + int(signal.Signals[signal_name])


class _Signals:
    """Remembers SIGTERM / SIGINT during training instead of dying mid-step (only in the main
    thread, where Python can handle signals); the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.previous: dict = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _check_training(config: Config) -> None:
    """Refuse combinations of options that cannot train (before a run starts)."""
    p, classes = config.train.label_dropout, config.model.num_classes
    check_ranges(config)
    check_precision(config.train.precision, "train.precision")
    if p and not classes:
        raise ValueError(
            "train.label_dropout needs a class-conditional model (model.num_classes > 0)"
        )
    if config.loss.kind == "classifier" and p:
        raise ValueError("a classifier needs every label: set train.label_dropout = 0")
    if config.loss.kind == "classifier" and config.train.sample_every:
        raise ValueError("a classifier draws no samples: set train.sample_every = 0")


def train(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    time_limit: float | None = None,
) -> DiffusionModel | NoisyClassifier:
    """Train per ``config`` into ``run_dir``; return the EMA model.

    ``stop_after`` ends the run after that many total steps, and ``time_limit`` after the
    first step that ends that many seconds after the loop began (as an interruption would),
    with a checkpoint; ``resume=True`` continues from the last checkpoint.
    """
    run, t = Path(run_dir), config.train
    device = _process_device(_device(config))
    objective = build_objective(config)
    _check_training(config)
    samplers.get(config.sample.sampler)  # validates the sampler of the sample grids
    x, labels = load_data(config)
    objective.check_data(x)
    world = _join_world(device)
    if t.batch_size % (world.size * t.accumulate):
        raise ValueError(
            f"train.batch_size = {t.batch_size} (the global batch) must divide evenly over "
            f"{world.size} process(es) x train.accumulate = {t.accumulate} micro-batches"
        )
    torch.manual_seed(config.seed)
    model = build_model(config, tuple(x.shape[1:])).to(device)
    objective.check_model(model)
    ema = EMA(model, t.ema_half_life)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    has_state = _prepare_run(run, config, resume, world)
    step = _resume(run, config, model, ema, optimizer, generator) if has_state else 0
    view = _training_view(model, config, world)
    x = x.to(device)
    labels = labels.to(device) if labels is not None else None
    last = min(t.steps, stop_after) if stop_after is not None else t.steps
    log = in_run(run, "metrics.csv").open("a", newline="") if world.writes else None
    writer = csv.writer(log) if log else None
    if writer and step == 0:
        writer.writerow(["step", "loss", "lr", "samples_per_s"])
    bar = tqdm(total=last, initial=step, desc="train", disable=not (progress and world.writes))
    clock = time.perf_counter()
    mark, seen = clock, 0  # the start of the log interval and the samples seen since
    with _Signals() as signals:
        while step < last:
            x0, draws, cond = _batch(x, labels, config, objective, model.schedule, generator, world)
            lr = t.lr * min(1.0, (step + 1) / max(t.warmup, 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss = _backward(view, objective, (x0, draws, cond), t.accumulate, step)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            ema.update(model, t.batch_size)
            step, seen = step + 1, seen + t.batch_size
            timed_out = time_limit is not None and time.perf_counter() - clock >= time_limit
            if world.stop(timed_out or signals.received is not None):
                last = step
            if step % t.log_every == 0 or step == last:
                now = time.perf_counter()
                value, rate = world.mean(loss), seen / max(now - mark, 1e-9)
                mark, seen = now, 0
                if writer:
                    writer.writerow([step, f"{value:.6g}", f"{lr:.3g}", f"{rate:.1f}"])
                    log.flush()
                bar.set_postfix(loss=f"{value:.4f}", samples_per_s=f"{rate:.0f}")
            if world.writes and t.sample_every and step % t.sample_every == 0:
                _sample_grid(ema.model, config, tuple(x.shape[1:]), run, step)
            if world.writes and (step % t.checkpoint_every == 0 or step == last):
                _save(run, model, ema, optimizer, step, generator, t.keep_checkpoints)
            bar.update(1)
    bar.close()
    if log:
        log.close()
        save_loss_curve(run / "metrics.csv", in_run(run, "loss.png"))
    world.barrier()
    if signals.received is not None:
        raise TrainingInterruptedError(signals.received, step, run)
    return ema.model
