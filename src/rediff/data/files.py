"""A user's own data: a folder of images (PNG/JPEG through Pillow) or a .npy/.npz array.

Images become float32 [N, C, H, W] in [-1, 1] by x = 2 p / 255 - 1. A folder whose images lie
in sub-folders is labelled by sub-folder (sorted names are classes 0, 1, ...), as in
torchvision's ImageFolder. Arrays are loaded without pickle; integer arrays are taken as
8-bit pixels and mapped like images, float arrays are used as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from rediff._tensor import Tensor, check_finite

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PIXEL_MAX = 255.0


def _image_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder not found: {root}; set data.path to a folder of PNG/JPEG files"
        )
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{root} holds no PNG or JPEG images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _read(path: Path, size: int, mode: str) -> np.ndarray:
    """One image as uint8 [H, W, C] (see ``_pixels``); a file Pillow cannot decode (truncated,
    not an image) is a ValueError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return _pixels(img.convert(mode), size)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(
            f"{path} could not be read as an image ({error}); remove or replace the file"
        ) from None


def _pixels(img, size: int) -> np.ndarray:
    """A Pillow image as uint8 [H, W, C], centre-cropped to a square and resized when
    size > 0."""
    from PIL import Image

    if size > 0:
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(img, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def load_image_folder(
    root: str | Path, size: int = 0, channels: int = 3
) -> tuple[Tensor, Tensor | None]:
    """Every image under ``root`` as [N, channels, H, W] in [-1, 1], and labels [N] when the
    images sit in sub-folders (else None).

    Args:
        size: resize to size x size (centre crop to a square first); 0 keeps each image's
            size, which must then be the same for all.
        channels: 3 (RGB) or 1 (greyscale).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")
    root = Path(root)
    files = _image_files(root)
    images = [_read(p, size, "RGB" if channels == 3 else "L") for p in files]
    first = images[0].shape
    for path, image in zip(files, images, strict=True):
        if image.shape != first:
            raise ValueError(
                f"images in {root} differ in size: {files[0].name} is {first[1]}x{first[0]}, "
                f"{path.name} is {image.shape[1]}x{image.shape[0]}; set data.image_size to "
                "resize them all"
            )
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return 2.0 * x / PIXEL_MAX - 1.0, _folder_labels(root, files)


def _folder_labels(root: Path, files: list[Path]) -> Tensor | None:
    parents = [p.parent.relative_to(root) for p in files]
    if any(parent == Path(".") for parent in parents):
        return None
    classes = sorted({parent.parts[0] for parent in parents})
    return torch.tensor([classes.index(parent.parts[0]) for parent in parents])


class ArrayData(NamedTuple):
    """What ``load_array`` read: data x [N, ...] in float32, labels [N] or None, and whether
    x were integer pixels (mapped to [-1, 1]: 256 levels) rather than continuous values."""

    x: Tensor
    labels: Tensor | None
    pixels: bool


def load_array(path: str | Path, *, integers: bool = False) -> ArrayData:
    """Data [N, ...] from a .npy file, or from a .npz file's ``x`` (or only) array with
    optional ``labels``; loaded with allow_pickle=False. With ``integers`` the array must
    hold integers and is returned as such (categories), not mapped to [-1, 1]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"array file not found: {path}; give an existing .npy/.npz (data.path or --data)"
        )
    if path.suffix not in (".npy", ".npz"):
        raise ValueError(
            f"data arrays are .npy or .npz files (data.path or --data), got {path.name}"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{path} could not be read without pickle: {error}") from None
    labels = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        keys = list(loaded.keys())
        if "x" not in keys and len(keys) != 1:
            raise ValueError(f"{path} holds arrays {keys}; name the data array 'x'")
        array = loaded["x" if "x" in keys else keys[0]]
        labels = torch.as_tensor(loaded["labels"]).long() if "labels" in keys else None
    else:
        array = loaded
    if array.ndim < 2 or array.shape[0] == 0:
        raise ValueError(
            f"{path}: data must be [N, ...] with N >= 1 samples, got shape {list(array.shape)}"
        )
    x = torch.as_tensor(array)
    pixels = not x.is_floating_point()
    if integers and not pixels:
        raise ValueError(f"{path} holds {x.dtype} values; categories must be integers")
    if not integers:
        x = 2.0 * x.float() / PIXEL_MAX - 1.0 if pixels else x.float()
    check_finite(f"data in {path}", x)
    if labels is not None and labels.shape != (x.shape[0],):
        raise ValueError(f"{path}: labels must have shape [{x.shape[0]}], got {labels.shape}")
    return ArrayData(x.long() if integers else x, labels, pixels)


def random_flip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image [B, C, H, W] left-right with probability 1/2."""
    if x.ndim != 4:
        raise ValueError(f"random flips need images [B, C, H, W], got shape {tuple(x.shape)}")
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
