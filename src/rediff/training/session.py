"""One training session on a run directory: opened (checked, locked, resumed), stepped,
logged, checkpointed and closed, with every file, lock and progress bar released on every
exit path.

Everything that can be refused is refused before the run directory changes: the config is
checked when it is read, the data and the model here, before the lock is taken.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rediff import data, losses, plots, samplers
from rediff._io import atomic_write, in_run
from rediff._tensor import Tensor
from rediff.discrete import (
    AutoregressiveModel,
    AutoregressiveObjective,
    DiscreteModel,
    DiscreteObjective,
    InsDelModel,
    InsDelObjective,
    MaskedObjective,
)
from rediff.model import NULL_LABEL
from rediff.nets import accelerate
from rediff.runs import Config, Dataset, DataSpec, Run, build_model, load_config, load_weights
from rediff.runs.config import differences, to_toml
from rediff.runs.directory import RUN_FILES, MetricsLog, RunLock, read_metrics
from rediff.runs.steering import draw
from rediff.training import checkpoint
from rediff.training.ema import EMA
from rediff.training.world import World, device_of, join


class TrainingInterruptedError(RuntimeError):
    """Training stopped on SIGTERM or SIGINT, after writing a checkpoint of the last step."""

    def __init__(self, signal_name: str, step: int, run: Path) -> None:
        super().__init__(
            f"{signal_name} received: stopped at step {step} with a checkpoint in {run}"
        )
        self.signal_name, self.step, self.run = signal_name, step, run
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


def build_objective(
    config: Config, levels: int | None = None
) -> losses.Objective | DiscreteObjective:
    """The training objective of ``config.loss`` (``levels``: the data's, for DDPM's bound's
    decoder; 256 for continuous data), or the discrete one for a d3pm process."""
    c = config.loss
    if c.kind is losses.Loss.MASKED:
        return MaskedObjective(c.mask_draws)
    if c.kind is losses.Loss.AUTOREGRESSIVE:
        return AutoregressiveObjective()
    if c.kind is losses.Loss.INSDEL:
        return InsDelObjective()
    if config.schedule.discrete:
        return DiscreteObjective(c.kind, c.ce_weight)
    return losses.Objective(
        kind=c.kind,
        weighting=c.weighting,
        time_sampler=c.time_sampler,
        vlb_weight=c.vlb_weight,
        variance=c.variance,
        levels=levels or 256,
        probes=c.probes,
        probe=c.probe,
    )


def _training_data(config: Config, dataset: Dataset) -> Tensor:
    """What the model trains on: integer categories for a discrete process (levels converted),
    the values for a continuous one (integer categories refused)."""
    if config.schedule.discrete:
        return dataset.categories()
    if dataset.integer:
        raise ValueError(
            f"data.kind = {config.data.kind.name!r} gives integer categories, which a "
            "continuous schedule cannot model: use a discrete schedule.kind (d3pm_*)"
        )
    return dataset.x


def check_data(config: Config, dataset: Dataset) -> None:
    """Refuse data this config cannot train on (before the run directory changes)."""
    x, labels, classes = dataset.x, dataset.labels, config.model.num_classes
    if config.data.flip and x.ndim != 4:
        raise ValueError(f"data.flip needs images [N, C, H, W]; the data are {list(x.shape)}")
    pictured = config.data.kind.suffix == ".png"
    if config.train.sample_every and pictured and not plots.can_picture(tuple(x.shape[1:])):
        raise ValueError(
            f"train.sample_every draws pictures, but the data are {list(x.shape[1:])} per "
            "sample (neither 2-D points nor images): set train.sample_every = 0"
        )
    if not classes:
        return
    if labels is None:
        raise ValueError(
            f"model.num_classes = {classes} needs labelled data; this data.kind = "
            f"{config.data.kind.name!r} has no labels (set model.num_classes = 0)"
        )
    if int(labels.max()) >= classes or int(labels.min()) < 0:
        raise ValueError(
            f"the data have labels in [{int(labels.min())}, {int(labels.max())}] but "
            f"model.num_classes = {classes} takes [0, {classes - 1}]"
        )


@dataclass
class Session:
    """The state of one training session (see ``open``)."""

    run: Path
    config: Config
    spec: DataSpec
    world: World
    x: Tensor
    labels: Tensor | None
    objective: losses.Objective
    model: torch.nn.Module
    view: torch.nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    saved: int | None = None  # the step of the newest checkpoint
    seconds: float = 0.0  # training time before this session
    log: MetricsLog | None = None
    bar: tqdm | None = None
    signals: _Signals = field(default_factory=_Signals)
    exits: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    started: float = field(default_factory=time.perf_counter)
    mark: tuple[float, int] = (0.0, 0)  # the start of the log interval, samples seen since

    # ---- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, config: Config, run_dir: str | Path, resume: bool, progress: bool) -> Session:
        """Check everything, then lock the run directory and start or resume the run."""
        run, t = Path(run_dir), config.train
        for name in RUN_FILES:
            in_run(run, name)  # no run file may lead outside the directory
        if t.threads:
            torch.set_num_threads(t.threads)
        device = device_of(t.device)
        dataset = config.data.kind.load(config.data, config.seed)
        check_data(config, dataset)
        objective = build_objective(config, dataset.levels)
        x = _training_data(config, dataset)
        objective.check_data(x)
        world = join(device)
        if t.batch_size % (world.size * t.accumulate):
            raise ValueError(
                f"train.batch_size = {t.batch_size} (the global batch) must divide evenly over "
                f"{world.size} process(es) x train.accumulate = {t.accumulate} micro-batches"
            )
        torch.manual_seed(config.seed)
        spec = DataSpec.of(config.data.kind, dataset)
        model = build_model(config, spec.shape, levels=spec.levels, ordinal=spec.ordinal)
        if t.init and not resume:
            _initialise(model, Path(t.init))
        model = model.to(device)
        objective.check_model(model)
        labels = dataset.labels.to(device) if config.model.num_classes else None
        session = cls(
            run=run,
            config=config,
            spec=spec,
            world=world,
            x=x.to(device),
            labels=labels,
            objective=objective,
            model=model,
            ema=EMA(model, t.ema_half_life),  # a copy of the plain net, before the view changes it
            view=_training_view(model, config, world),
            optimizer=torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay),
            generator=torch.Generator().manual_seed(config.seed),
        )
        try:
            session._start(resume, progress)
        except BaseException:
            session.close()
            raise
        return session

    def _start(self, resume: bool, progress: bool) -> None:
        if resume and not in_run(self.run, "config.toml").is_file():
            raise FileNotFoundError(
                f"{self.run} holds no run to resume (no config.toml); check the path, or start "
                "a new run without --resume"
            )
        if self.world.writes:
            self.run.mkdir(parents=True, exist_ok=True)
            self.exits.enter_context(RunLock(self.run))
            checkpoint.remove_unfinished(self.run)
        latest = checkpoint.latest(self.run)
        if latest is not None and not resume:
            raise FileExistsError(
                f"{self.run} already holds a run (checkpoint {latest.name}); pass --resume to "
                "continue it, or use a new folder"
            )
        if latest is not None:
            self._resume(latest)
        elif resume:
            warnings.warn(
                f"{self.run} has no checkpoint yet: starting it from step 0", stacklevel=3
            )
        if self.world.writes:
            self._write_description()
            self.log = MetricsLog(self.run)
            self.exits.callback(self.log.close)
            self.seconds = self.log.start(self.step)
        self.world.barrier()
        self.exits.enter_context(self.signals)
        writes = progress and self.world.writes
        self.bar = tqdm(
            total=self.config.train.steps, initial=self.step, desc="train", disable=not writes
        )
        self.exits.callback(self.bar.close)
        self.started = time.perf_counter()
        self.mark = (self.started, 0)

    def _resume(self, latest: Path) -> None:
        """Continue from the newest valid checkpoint, if the config and the data are the run's."""
        saved = load_config(in_run(self.run, "config.toml"))
        changed = differences(saved, self.config)
        if changed:
            raise ValueError(
                f"{self.run} holds a run with a different config ({'; '.join(changed)}); resume "
                f"with the run's config ({self.run / 'config.toml'}) or start a new run directory"
            )
        old = DataSpec.load(self.run)
        if old != self.spec:
            raise ValueError(
                f"the data changed since {self.run} started: {old} then, {self.spec} now"
            )
        load_weights(self.model, latest / "model.safetensors")
        load_weights(self.ema.model, latest / "ema.safetensors")
        state = checkpoint.load_state(latest)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = self.saved = int(state["step"])

    def _write_description(self) -> None:
        """config.toml (the latest config: a resumed run may have changed its steps) and
        run.json (the data's description)."""
        text = to_toml(self.config)
        atomic_write(in_run(self.run, "config.toml"), lambda tmp: Path(tmp).write_text(text))
        self.spec.save(self.run)

    # ---- stepping ----------------------------------------------------------------------------

    @property
    def forward_process(self):
        """The model's forward process: its Schedule, its discrete or masked process, or
        None (autoregressive)."""
        over_tokens = isinstance(self.model, (DiscreteModel, AutoregressiveModel, InsDelModel))
        return self.model.process if over_tokens else self.model.schedule

    def train_step(self) -> Tensor:
        """One optimizer step on the next global batch; returns this process's loss."""
        t = self.config.train
        lr = t.lr * min(1.0, (self.step + 1) / max(t.warmup, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        batch = _batch(
            self.x,
            self.labels,
            self.config,
            self.objective,
            self.forward_process,
            self.generator,
            self.world,
        )
        loss = _backward(self, batch, t.accumulate)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model, t.batch_size)
        self.step += 1
        self.mark = (self.mark[0], self.mark[1] + t.batch_size)
        if self.bar is not None:
            self.bar.update(1)
        return loss

    def should_stop(self, time_limit: float | None) -> bool:
        """True on every process once the time limit has passed or a signal came."""
        timed_out = time_limit is not None and time.perf_counter() - self.started >= time_limit
        return self.world.stop(timed_out or self.signals.received is not None)

    def log_row(self, loss: Tensor, last: int) -> None:
        """A metrics.csv row every ``train.log_every`` steps and at the end."""
        t = self.config.train
        if self.step % t.log_every and self.step != last:
            return
        now = time.perf_counter()
        value, rate = self.world.mean(loss), self.mark[1] / max(now - self.mark[0], 1e-9)
        self.mark = (now, 0)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.log is not None:
            seconds = self.seconds + now - self.started
            row = {"step": self.step, "loss": value, "lr": lr, "samples_per_s": rate}
            self.log.append({**row, "seconds": seconds})
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{value:.4f}", samples_per_s=f"{rate:.0f}")

    @torch.no_grad()
    def sample_grid(self) -> None:
        """Samples from the EMA model at this step (fixed seed), samples/step_XXXXXXX.png
        (.txt for text)."""
        t, s = self.config.train, self.config.sample
        if not (self.world.writes and t.sample_every and self.step % t.sample_every == 0):
            return
        run = Run(self.run, self.config, self.spec, self.ema.model)
        n = min(s.n, 100) if len(self.spec.shape) == 3 else s.n
        generator = torch.Generator().manual_seed(self.config.seed)
        options = {"generator": generator, "overflow": "drop"}  # a grid never stops training
        drawn = draw(run, n, sampler=s.sampler, steps=s.steps, **options)
        in_run(self.run, "samples").mkdir(exist_ok=True)
        path = in_run(self.run, "samples", f"step_{self.step:07d}{self.spec.kind.suffix}")
        caption = (
            f"{n} samples of the EMA model after {self.step} training steps, drawn by "
            f"{samplers.describe(s.sampler, s.steps)} with {drawn.nfe} evaluations from the same "
            "seed at every step"
        )
        if drawn.x.shape[0] < n:
            caption += f" ({n - drawn.x.shape[0]} outgrew the maximum length and are left out)"
        title = f"step {self.step}"
        picture = self.spec.kind.picture
        atomic_write(
            path,
            lambda tmp: picture(
                drawn.x,
                Path(tmp),
                title=title,
                labels=drawn.labels,
                caption=caption,
                tokenizer=self.spec.tokenizer,
            ),
        )

    def checkpoint(self, last: int) -> None:
        """A checkpoint every ``train.checkpoint_every`` steps and at the end."""
        t = self.config.train
        if not self.world.writes or (self.step % t.checkpoint_every and self.step != last):
            return
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        weights = (self.model.state_dict(), self.ema.model.state_dict())
        saved = checkpoint.save(self.run, self.step, *weights, state, t.keep_checkpoints)
        for name in ("model.safetensors", "ema.safetensors"):
            copy = lambda tmp, name=name: shutil.copyfile(saved / name, tmp)  # noqa: E731
            atomic_write(in_run(self.run, name), copy)
        self.saved = self.step

    # ---- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Release everything this session holds (log, lock, signal handlers, bar) and draw
        the loss curve from what was logged; safe to call on any exit path."""
        try:
            if self.log is not None and self.log.file is not None:
                self.log.close()
                rows = read_metrics(self.log.path)
                if rows:
                    caption = (
                        "The training loss against the step, logged every train.log_every "
                        "steps (log scale when all values are positive)."
                    )
                    curve = lambda tmp: plots.save_loss_curve(rows, tmp, caption)  # noqa: E731
                    atomic_write(in_run(self.run, "loss.png"), curve)
        finally:
            self.exits.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        if exc[0] is None:  # on an error the others may be in a collective: no group teardown
            self.world.barrier()
            self.world.leave()


def _initialise(model: torch.nn.Module, source: Path) -> None:
    """Start ``model`` from the EMA weights of the run in ``source`` (train.init)."""
    weights = in_run(source, "ema.safetensors") if source.is_dir() else source
    if not weights.is_file():
        raise FileNotFoundError(
            f"train.init = {str(source)!r} holds no ema.safetensors; point it at a trained run"
        )
    load_weights(model, weights)


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


def _batch(x, labels, config: Config, objective, schedule, generator, world: World):
    """This process's slice of the global batch: data, random inputs, conditioning."""
    b, t = config.train.batch_size, config.train
    idx = torch.randint(x.shape[0], (b,), generator=generator)
    x0 = x[idx.to(x.device)]
    if config.data.flip:
        x0 = data.random_flip(x0, generator)
    draws = objective.draw(schedule, x0, generator)
    cond = {}
    if labels is not None:
        y = labels[idx.to(labels.device)]
        if t.label_dropout:  # classifier-free guidance's unconditional model
            dropped = torch.rand(b, generator=generator) < t.label_dropout
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


def _backward(session: Session, batch, parts: int) -> Tensor:
    """Gradients of the batch-mean loss of this process's slice, accumulated over ``parts``
    equal micro-batches (each loss / parts: the sum is the slice's mean), DDP's all-reduce on
    the last only. Returns the loss (detached)."""
    view, n = session.view, batch[0].shape[0] // parts
    ddp = isinstance(view.net, torch.nn.parallel.DistributedDataParallel)
    total = 0.0
    for k in range(parts):
        sync = ddp and k < parts - 1
        with view.net.no_sync() if sync else contextlib.nullcontext():
            x0, draws, cond = _take(batch, slice(k * n, (k + 1) * n))
            loss = session.objective(view, x0, draws, **cond)
            if not torch.isfinite(loss):
                kept = (
                    f"the checkpoint of step {session.saved} is kept"
                    if session.saved is not None
                    else "no checkpoint was written yet"
                )
                raise FloatingPointError(
                    f"loss became {float(loss)} at step {session.step + 1}; {kept}. Lower "
                    "train.lr or check the data"
                )
            (loss / parts).backward()
        total = total + loss.detach().float() / parts
    return total
