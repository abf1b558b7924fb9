"""Data: exact Gaussian mixtures, 2-D toy sets, scikit-learn's digits, image folders,
.npy/.npz arrays and text (Python's own documentation, or the user's .txt files)."""

from rediff.data.digits import digits_split, load_digits, to_pixels
from rediff.data.files import ArrayData, load_array, load_image_folder, random_flip
from rediff.data.mixture import GaussianMixture, MixtureDenoiser
from rediff.data.text import Tokenizer, TokenizerKind, pydoc_corpus, read_text
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
    "Tokenizer",
    "TokenizerKind",
    "checkerboard",
    "digits_split",
    "eight_gaussians",
    "eight_gaussians_mixture",
    "load_array",
    "load_digits",
    "load_image_folder",
    "pydoc_corpus",
    "random_flip",
    "read_text",
    "ring",
    "swiss_roll",
    "to_pixels",
    "toy",
    "two_moons",
]
