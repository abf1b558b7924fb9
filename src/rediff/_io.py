"""Safe files: safetensors written atomically (write, fsync, rename), read without pickle."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from rediff._tensor import Tensor


def atomic_save_tensors(
    tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` to ``path`` as safetensors so that a crash never leaves a partial file:
    the data go to a temporary file in the same folder, are fsynced, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors file (no code execution is possible)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return load_file(path)
