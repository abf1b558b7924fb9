"""The training loop: data -> objective -> AdamW (warm-up, clipping) -> EMA, with a run
directory that survives interruption, on one process or many (torchrun).

Run directory: ``config.toml``, ``run.json`` (the data's description), ``model.safetensors``
and ``ema.safetensors`` (the latest weights), ``checkpoints/step_*/`` (the last
``train.keep_checkpoints``: weights, ``train_state.pt`` with optimizer state, step and RNG
states, and a manifest of checksums; see ``rediff.training.checkpoint``), ``metrics.csv``,
``samples/step_*.png`` (every ``train.sample_every`` steps) and ``loss.png``. Every file is
written atomically, one process at a time trains into a directory (``.lock``), and one
torch.Generator drives data order, times, noise and probes, so a resumed run continues
exactly where it stopped. The session (``rediff.training.session``) opens, steps, logs,
checkpoints and closes; ``train`` only runs it.
"""

from __future__ import annotations

from pathlib import Path

from rediff.runs import Config, Model
from rediff.training.session import Session, TrainingInterruptedError


def train(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    time_limit: float | None = None,
) -> Model:
    """Train per ``config`` into ``run_dir``; return the EMA model.

    ``resume=True`` continues from the newest valid checkpoint (a run may go on to more
    ``train.steps``); ``stop_after`` ends the run after that many total steps, and
    ``time_limit`` after the first step that ends that many seconds after the loop began (as
    an interruption would), with a checkpoint. SIGTERM / SIGINT stop after the current step
    with a checkpoint and raise ``TrainingInterruptedError``.
    """
    last = config.train.steps if stop_after is None else min(config.train.steps, stop_after)
    with Session.open(config, run_dir, resume, progress) as session:
        while session.step < last:
            loss = session.train_step()
            if session.should_stop(time_limit):
                last = session.step
            session.log_row(loss, last)
            session.sample_grid()
            session.checkpoint(last)
    if session.signals.received is not None:
        raise TrainingInterruptedError(session.signals.received, session.step, session.run)
    return session.ema.model
