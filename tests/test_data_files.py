"""A user's own data: image folders and arrays, and the errors bad files get."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rediff import data
from rediff.training import load_config, train


def _png(path, width, height, value, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, (width, height), fill).save(path)


def test_image_folder_with_class_subfolders(tmp_path):
    for i in range(3):
        _png(tmp_path / "cats" / f"{i}.png", 12, 10, 255)
        _png(tmp_path / "dogs" / f"{i}.jpg", 10, 10, 0)
    x, labels = data.load_image_folder(tmp_path, size=8)
    assert x.shape == (6, 3, 8, 8) and x.dtype == torch.float32
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    # solid PNG colours (255, 0, 0) map exactly to (1, -1, -1); JPEG is lossy, checked loosely
    assert torch.equal(x[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(x[3, :, 4, 4], torch.tensor([-1.0, -1.0, 1.0]), atol=0.05)


def test_flat_folder_is_unlabelled_and_greyscale_works(tmp_path):
    for i in range(2):
        _png(tmp_path / f"{i}.png", 4, 4, 51 * i, mode="L")
    x, labels = data.load_image_folder(tmp_path, channels=1)
    assert labels is None and x.shape == (2, 1, 4, 4)
    assert torch.allclose(x[1], torch.full((1, 4, 4), 2 * 51 / 255 - 1))


def test_bad_image_folders_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        data.load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PNG or JPEG"):
        data.load_image_folder(tmp_path / "empty")
    _png(tmp_path / "mixed" / "a.png", 8, 8, 0)
    _png(tmp_path / "mixed" / "b.png", 16, 8, 0)
    with pytest.raises(ValueError, match=r"a.png is 8x8, b.png is 16x8; set data.image_size"):
        data.load_image_folder(tmp_path / "mixed")
    assert data.load_image_folder(tmp_path / "mixed", size=4)[0].shape == (2, 3, 4, 4)


def test_arrays(tmp_path):
    np.save(tmp_path / "f.npy", np.linspace(-1, 1, 20, dtype=np.float32).reshape(10, 2))
    x, labels, pixels = data.load_array(tmp_path / "f.npy")
    assert x.shape == (10, 2) and labels is None and float(x[-1, -1]) == 1.0 and not pixels
    pixels = np.full((4, 1, 2, 2), 255, dtype=np.uint8)
    np.savez(tmp_path / "p.npz", x=pixels, labels=np.arange(4))
    x, labels, pixels = data.load_array(tmp_path / "p.npz")
    assert torch.equal(x, torch.ones(4, 1, 2, 2)) and labels.tolist() == [0, 1, 2, 3] and pixels


def test_bad_arrays_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="array file not found"):
        data.load_array(tmp_path / "none.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError, match="without pickle"):
        data.load_array(tmp_path / "obj.npy")
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="contains NaN"):
        data.load_array(tmp_path / "nan.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2)), b=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="name the data array 'x'"):
        data.load_array(tmp_path / "two.npz")
    np.save(tmp_path / "empty.npy", np.zeros((0, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"N >= 1 samples, got shape \[0, 2\]"):
        data.load_array(tmp_path / "empty.npy")


def test_a_truncated_image_is_named(tmp_path):
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / name)
    whole = (tmp_path / "b.png").read_bytes()
    (tmp_path / "b.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"b\.png could not be read as an image"):
        data.load_image_folder(tmp_path)


def test_random_flip_mirrors_about_half(tmp_path):
    x = torch.arange(2 * 3 * 4.0).reshape(1, 1, 2, 12).expand(1000, 1, 2, 12)
    out = data.random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.equal(flipped | (out == x).flatten(1).all(1), torch.ones(1000, dtype=torch.bool))
    assert 400 < int(flipped.sum()) < 600


def test_training_from_an_image_folder(tmp_path):
    for i in range(4):
        _png(tmp_path / "img" / f"{i}.png", 6, 6, 60 * i)
    config = load_config(
        None,
        [
            "data.kind='images'",
            f"data.path='{tmp_path / 'img'}'",
            "data.image_size=4",
            "data.flip=true",
            "model.width=16",
            "model.depth=1",
            "train.steps=3",
            "train.batch_size=4",
        ],
    )
    train(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "ema.safetensors").is_file()
    assert load_config(tmp_path / "run" / "config.toml") == config


@pytest.mark.parametrize(
    "overrides, error",
    [
        (["data.kind='images'", "data.path='/no/such/folder'"], "image folder not found"),
        (["data.kind='array'", "data.path='nan.npy'"], "contains NaN"),
        (["data.kind='images'", "data.path='mixed'"], "differ in size"),
        (["data.kind='toy'", "data.flip=true"], "data.flip needs images"),
        (["data.kind='toy'", "model.num_classes=3"], "needs labelled data"),
    ],
)
def test_bad_data_leaves_no_run_directory(tmp_path, monkeypatch, overrides, error):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]]))
    _png(tmp_path / "mixed" / "a.png", 8, 8, 0)
    _png(tmp_path / "mixed" / "b.png", 4, 4, 0)
    config = load_config(None, overrides)
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
