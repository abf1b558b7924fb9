"""Safe files: safetensors written atomically (write, fsync, rename) with a checksum of their
tensors in the metadata, read without pickle and verified."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rediff._tensor import Tensor


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path``: a crash at any moment leaves either the old file or the new one, never part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name ends in the target's suffix: writers that pick a format by suffix
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def in_run(run: str | Path, *parts: str) -> Path:
    """``run / parts``, checked to resolve (symbolic links followed) inside the directory
    ``run``: rediff reads and writes nothing outside a run directory, whatever links it holds
    (a ``metrics.csv`` linked to another file is refused, not appended to)."""
    run = Path(run)
    path = run.joinpath(*parts)
    if not path.resolve().is_relative_to(run.resolve()):
        raise ValueError(
            f"{path} leads outside {run} (a symbolic link?); rediff reads and writes only "
            "inside a run directory: remove the link"
        )
    return path


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that renames inside it survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


CHECKSUM = "rediff.sha256"


def tensors_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_save_tensors(
    tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` to ``path`` as safetensors, atomically (``atomic_write``), with their
    ``tensors_digest`` in the metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {**(metadata or {}), CHECKSUM: tensors_digest(tensors)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata))


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors file (no code execution is possible) and check it against the
    checksum in its metadata: a corrupt or truncated file is a ValueError, never data."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"{path} is not a readable safetensors file (truncated?): {error}"
        ) from None
    expected = metadata.get(CHECKSUM)
    if expected is not None and tensors_digest(tensors) != expected:
        raise ValueError(f"{path} does not match its checksum: the file is corrupt")
    return tensors
