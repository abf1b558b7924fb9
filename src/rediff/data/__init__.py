"""Data: exact Gaussian mixtures, 2-D toy sets, scikit-learn's digits, image folders and
.npy/.npz arrays."""

from rediff.data.digits import digits_split, load_digits, to_pixels
from rediff.data.files import ArrayData, load_array, load_image_folder, random_flip
from rediff.data.mixture import GaussianMixture, MixtureDenoiser
from rediff.data.toy import (
    TOY_SETS,
    checkerboard,
    eight_gaussians,
    eight_gaussians_mixture,
    ring,
    swiss_roll,
    toy,
    two_moons,
)

__all__ = [
    "TOY_SETS",
    "ArrayData",
    "GaussianMixture",
    "MixtureDenoiser",
    "checkerboard",
    "digits_split",
    "eight_gaussians",
    "eight_gaussians_mixture",
    "load_array",
    "load_digits",
    "load_image_folder",
    "random_flip",
    "ring",
    "swiss_roll",
    "to_pixels",
    "toy",
    "two_moons",
]
