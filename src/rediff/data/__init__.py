"""Data: exact Gaussian mixtures, 2-D toy sets, scikit-learn's digits."""

from rediff.data.digits import load_digits, to_pixels
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
    "GaussianMixture",
    "MixtureDenoiser",
    "checkerboard",
    "eight_gaussians",
    "eight_gaussians_mixture",
    "load_digits",
    "ring",
    "swiss_roll",
    "to_pixels",
    "toy",
    "two_moons",
]
