"""Checkpoints that survive being killed: one directory per checkpoint, verified on load.

    RUN/checkpoints/step_0000500/  model.safetensors  ema.safetensors  train_state.pt
                                   manifest.json  (step and the SHA-256 of each file)

A checkpoint is written into a hidden temporary directory (every file fsynced) and renamed
into place in one step, so a crash leaves either no new checkpoint or a whole one; the last
``keep`` are kept. ``latest`` returns the newest checkpoint whose files match its manifest
and warns about (and skips) any newer one that does not, so a corrupt or truncated file is
never loaded silently. ``train_state.pt`` is read with ``weights_only=True``: no pickled
code runs on any load path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from rediff._io import atomic_save_tensors, atomic_write, fsync_dir, in_run, umask

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
FILES = ("model.safetensors", "ema.safetensors", "train_state.pt")


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _name(step: int) -> str:
    return f"step_{step:07d}"


def save(run: Path, step: int, model: dict, ema: dict, state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` (state dicts of the model and its EMA, the training state)
    atomically as a directory, then delete all but the newest ``keep``."""
    root = in_run(run, CHECKPOINTS)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_name(step)}.", dir=root))
    try:
        atomic_save_tensors(model, tmp / "model.safetensors")
        atomic_save_tensors(ema, tmp / "ema.safetensors")
        atomic_write(tmp / "train_state.pt", lambda path: torch.save(state, path))
        manifest = {"step": step, "sha256": {name: sha256(tmp / name) for name in FILES}}
        text = json.dumps(manifest, indent=1)
        atomic_write(tmp / MANIFEST, lambda path: Path(path).write_text(text))
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700
        final = in_run(root, _name(step))
        if final.exists():  # the same step again (a resumed run that stopped at once)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    for old in steps(run)[:-keep]:
        shutil.rmtree(old)
    return final


def remove_unfinished(run: Path) -> None:
    """Delete the hidden temporary directories of checkpoints that a killed process left
    half-written (only the run's lock holder calls this)."""
    root = in_run(run, CHECKPOINTS)
    if root.is_dir():
        for tmp in root.glob(".step_*"):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)


def steps(run: Path) -> list[Path]:
    """The run's checkpoint directories, oldest first (complete or not); a ValueError if one
    leads outside the run (``in_run``)."""
    root = in_run(run, CHECKPOINTS)
    if not root.is_dir():
        return []
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
    return [in_run(run, CHECKPOINTS, p.name) for p in found]


def problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be trusted (missing file, bad manifest, checksum mismatch),
    or None if every file matches its manifest."""
    try:
        manifest = json.loads(in_run(checkpoint, MANIFEST).read_text())
        expected = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable {MANIFEST} ({error})"
    for name in FILES:
        if not in_run(checkpoint, name).is_file():
            return f"{name} is missing"
        if sha256(checkpoint / name) != expected.get(name):
            return f"{name} does not match its checksum (corrupt or truncated)"
    return None


def latest(run: Path) -> Path | None:
    """The newest checkpoint that passes ``problem``; newer broken ones are skipped with a
    warning. None if the run has no checkpoint; a ValueError if it has only broken ones."""
    found = steps(run)
    for checkpoint in reversed(found):
        reason = problem(checkpoint)
        if reason is None:
            return checkpoint
        warnings.warn(f"skipping checkpoint {checkpoint}: {reason}", stacklevel=2)
    if found:
        raise ValueError(
            f"{run} has no valid checkpoint (all {len(found)} failed their checksums); start a "
            "new run directory"
        )
    return None


def load_state(checkpoint: Path) -> dict[str, Any]:
    """The training state of a verified checkpoint, without unpickling code."""
    try:
        path = in_run(checkpoint, "train_state.pt")
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # pickle.UnpicklingError and friends: refuse, never execute
        raise ValueError(
            f"{checkpoint / 'train_state.pt'} is not a plain training state and was not "
            f"loaded ({type(error).__name__}: {str(error).splitlines()[0]})"
        ) from None
