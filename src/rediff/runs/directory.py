"""A run directory that users cannot corrupt by accident: one trainer at a time (a lock),
a metrics log that only the lock holder appends to and that is read back robustly, and every
file confined to the directory (``_io.in_run``).

    RUN/config.toml  run.json  model.safetensors  ema.safetensors  metrics.csv  loss.png
        samples/step_*.png  checkpoints/step_*/  .lock (held while training)
"""

from __future__ import annotations

import csv
import errno
import fcntl
import math
import os
import socket
import warnings
from pathlib import Path

from rediff._io import atomic_write, in_run

#: what a run directory holds (``checkpoints/``: ``rediff.training.checkpoint``)
RUN_FILES = (
    "config.toml",
    "run.json",
    "model.safetensors",
    "ema.safetensors",
    "metrics.csv",
    "loss.png",
    "samples",
    "checkpoints",
    ".lock",
)


class RunLockedError(FileExistsError):
    """Another process is training into the run directory."""


class RunLock:
    """An exclusive lock on a run directory for as long as a process trains into it.

    ``RUN/.lock`` is locked with ``flock`` and holds the owner's host and PID. The kernel
    releases the lock when its process dies, however it dies, so a lock file left by a killed
    run is simply taken over (with a note of the old owner); a live owner is named in the
    error. ``flock`` is reliable on local file systems; network file systems may not honour
    it across machines.
    """

    def __init__(self, run: Path) -> None:
        self.path = in_run(run, ".lock")
        self.file = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            file.seek(0)
            owner = file.read().strip() or "another process"
            file.close()
            if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise RunLockedError(
                f"{self.path.parent} is being trained by {owner} (lock {self.path}); wait for "
                "it to finish or stop it, or train into another --run-dir"
            ) from None
        file.seek(0)
        previous = file.read().strip()
        if previous:
            warnings.warn(
                f"taking over {self.path} from {previous}, which stopped without releasing it",
                stacklevel=2,
            )
        file.seek(0)
        file.truncate()
        file.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        self.file = file
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.truncate(0)  # an empty lock file: released cleanly
            self.file.close()  # closing releases the flock
            self.file = None


# ---- metrics.csv -----------------------------------------------------------------------------

#: columns of metrics.csv: the step, the mean loss over the log interval's last step, the
#: learning rate, samples per second over the interval, and the training seconds so far
COLUMNS = ("step", "loss", "lr", "samples_per_s", "seconds")


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics.csv as numbers, oldest first. Rows that are not numbers (a
    repeated header, a line cut short by a crash) are skipped, and a step logged twice keeps
    its last row; files written before the ``seconds`` column have NaN there."""
    if not path.is_file():
        return []
    rows: dict[int, dict[str, float]] = {}
    with open(path, newline="") as f:
        for record in csv.DictReader(f):
            try:
                row = {k: float(record[k]) for k in COLUMNS[:4]}
                row["seconds"] = float(record.get("seconds") or math.nan)
            except (TypeError, ValueError):
                continue
            if all(math.isfinite(row[k]) for k in ("step", "samples_per_s")):
                rows[int(row["step"])] = row
    return [rows[step] for step in sorted(rows)]


class MetricsLog:
    """metrics.csv of a run, appended by the lock holder only. ``start(step)`` makes the file
    hold exactly the rows up to ``step`` (a new run: none, a resumed one: those before its
    checkpoint, so rows logged after it and then repeated are not duplicated), written
    atomically."""

    def __init__(self, run: Path) -> None:
        self.path = in_run(run, "metrics.csv")
        self.file = None
        self.writer = None

    def start(self, step: int) -> float:
        """Rewrite the log up to ``step`` and open it for appending; returns the training
        seconds logged so far (0 for a new run)."""
        kept = [r for r in read_metrics(self.path) if r["step"] <= step] if step else []

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                out = csv.writer(f)
                out.writerow(COLUMNS)
                for r in kept:
                    out.writerow(_formatted(r))

        atomic_write(self.path, write)
        self.file = open(self.path, "a", newline="")  # noqa: SIM115 - closed by close()
        self.writer = csv.writer(self.file)
        seconds = [r["seconds"] for r in kept if math.isfinite(r["seconds"])]
        return seconds[-1] if seconds else 0.0

    def append(self, row: dict[str, float]) -> None:
        self.writer.writerow(_formatted(row))
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _formatted(row: dict[str, float]) -> list[str]:
    return [
        str(int(row["step"])),
        f"{row['loss']:.6g}",
        f"{row['lr']:.3g}",
        f"{row['samples_per_s']:.1f}",
        f"{row['seconds']:.1f}",
    ]
