"""Toy sets and digits: shapes, scales, seeding, and names."""

from __future__ import annotations

import pytest
import torch

from rediff import data


@pytest.mark.parametrize("name", list(data.TOY_SETS))
def test_toy_sets_are_seeded_centred_and_unit_scale(name):
    a = data.toy(name, 3000, generator=torch.Generator().manual_seed(1))
    b = data.toy(name, 3000, generator=torch.Generator().manual_seed(1))
    c = data.toy(name, 3000, generator=torch.Generator().manual_seed(2))
    assert a.shape == (3000, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()
    assert (a.mean(0).abs() < 0.5).all()
    assert ((a.std(0) > 0.3) & (a.std(0) < 2.0)).all()


def test_toy_shapes_have_their_geometry():
    gen = torch.Generator().manual_seed(0)
    ring = data.ring(2000, generator=gen, radius=1.5, noise=0.0)
    torch.testing.assert_close(ring.norm(dim=1), torch.full((2000,), 1.5))
    board = data.checkerboard(2000, generator=gen)
    cells = torch.floor(board + 2).long()  # cell indices 0..3 on each axis
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # only one colour of squares
    assert board.abs().max() <= 2.0


def test_unknown_toy_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown toy data set 'spiral'.*moons.*ring"):
        data.toy("spiral", 10)
    with pytest.raises(ValueError, match="positive integer"):
        data.toy("moons", 0)


def test_digits_are_scaled_and_labelled():
    images, labels = data.load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert float(images.min()) == -1.0 and float(images.max()) == 1.0
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))
    # pixel levels are k/8 - 1 for the 17 grey levels k = 0..16
    levels = torch.unique(data.to_pixels(images))
    torch.testing.assert_close(levels, torch.arange(17, dtype=torch.float32))
