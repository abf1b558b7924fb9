"""What a data kind is: one registered entry that knows how to load its data, whether the
data are quantised (levels) and labelled, how to picture samples and how to score them.

A kind is one file in ``rediff/runs/kinds/`` that calls ``register(DataKind(...))``; the
package imports every module in it, so adding a kind touches that one file (and its tests).
The config's ``data.kind`` is parsed into the registered ``DataKind`` when the config is
read; code above never compares the name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rediff import metrics, plots
from rediff._tensor import Tensor, check_finite
from rediff.data.text import Tokenizer, TokenizerKind


@dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` section: ``kind`` and the options the kinds read (each kind documents
    which)."""

    kind: DataKind | str = "toy"
    name: str = "moons"  # toy: the set's name (rediff.data.TOY_SETS)
    n: int = 20000  # toy: samples drawn once, with the run's seed
    path: str = ""  # images: a folder of PNG/JPEG; array: a .npy/.npz file
    image_size: int = 0  # images: resize to this square size (0: keep, all must match)
    channels: int = 3  # images: 3 (RGB) or 1 (greyscale)
    flip: bool = False  # images: random left-right flips
    categories: int = 0  # categories: the number of values K (0: the data's largest + 1)
    ordinal: bool = False  # categories: the values are ordered levels, not tokens
    length: int = 128  # text: tokens per sequence
    tokenizer: TokenizerKind = TokenizerKind.CHAR  # text: char (the corpus's characters) or byte

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", DataKind.parse(self.kind, "data.kind"))
        object.__setattr__(self, "tokenizer", TokenizerKind.parse(self.tokenizer))
        self.kind.check(self)


@dataclass(frozen=True)
class Dataset:
    """Data [N, *D], labels [N] (or None), and the number of values per coordinate
    (``levels``; None for continuous data). Quantised values are floats on ``levels``
    equally spaced points of [-1, 1] (17 for the digits, 256 for 8-bit images), or integer
    categories 0..levels-1 (token data); ``ordinal`` says whether their order means
    anything (levels: yes; tokens: no). Text carries its ``tokenizer``."""

    x: Tensor
    labels: Tensor | None = None
    levels: int | None = None
    ordinal: bool = True
    tokenizer: Tokenizer | None = None

    def __post_init__(self) -> None:
        if self.x.ndim < 2 or self.x.shape[0] == 0:
            raise ValueError(
                f"data must be [N, ...] with N >= 1 samples, got shape {list(self.x.shape)}"
            )
        check_finite("the data", self.x)
        if self.labels is not None and self.labels.shape != (self.x.shape[0],):
            raise ValueError(
                f"labels must have shape [{self.x.shape[0]}], got {list(self.labels.shape)}"
            )

    @property
    def classes(self) -> int:
        """The number of classes the labels name (0: unlabelled)."""
        return 0 if self.labels is None else int(self.labels.max()) + 1

    @property
    def integer(self) -> bool:
        """Whether x holds integer categories (rather than values in the model's space)."""
        return not self.x.is_floating_point()

    def categories(self) -> Tensor:
        """x as integer categories 0..levels-1 for a discrete model: integer data as they
        are, levels on [-1, 1] by x -> round((x + 1) (levels - 1) / 2); continuous data are
        refused."""
        if self.integer:
            return self.x.long()
        if self.levels is None:
            raise ValueError(
                "a discrete process (schedule.kind = 'd3pm_*') needs quantised data (digits, "
                "images, integer arrays, categories); these are continuous values: use a "
                "continuous schedule.kind"
            )
        return torch.round((self.x.double() + 1.0) * (self.levels - 1) / 2.0).long()


#: scores of samples [n, *D] (with their labels, or None) against a kind's data, seeded
Scorer = Callable[[Tensor, "Tensor | None", Dataset, int], "list[metrics.Score]"]


def _picture(
    samples: Tensor,
    path: Path,
    *,
    title: str,
    labels: Tensor | None = None,
    caption: str = "",
    cols: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> None:
    plots.save_samples(samples, path, title, cols=cols, labels=labels, caption=caption)


@dataclass(frozen=True)
class DataKind:
    """A registered data kind.

    Attributes:
        name: the config's ``data.kind``.
        load: the training data of a ``[data]`` section and the run's seed.
        check: refuses a ``[data]`` section this kind cannot load, before anything is read.
        held_out: data the model was not trained on (digits' held-out split), if the kind
            has such a split: ``rediff nll`` scores it by default.
        score: measures of sample quality against the data (``rediff eval``), if any.
        picture: ``picture(samples, path, title=, labels=, caption=, cols=, tokenizer=)``
            writes samples [n, *D] as a captioned picture (default: ``plots.save_samples``,
            2-D points as a scatter plot, images as a grid of ``cols`` columns;
            ``plots.can_picture`` says which shapes), or as text.
        suffix: the file type ``picture`` writes (training's samples/step_*, the default
            ``rediff sample --out``).
        default_n: how many samples ``rediff eval`` scores by default, given the data.
        variable_length: whether the sequences vary in length (rows [N, L] padded with -1
            after each end; only an insertion/deletion model takes them).
    """

    name: str
    load: Callable[[DataConfig, int], Dataset]
    check: Callable[[DataConfig], None] = lambda config: None
    held_out: Callable[[DataConfig, int], Dataset] | None = None
    score: Scorer | None = None
    picture: Callable[..., None] = _picture
    suffix: str = ".png"
    default_n: Callable[[Dataset], int] = lambda data: min(data.x.shape[0] // 2, 5000)
    variable_length: bool = False
    doc: str = field(default="", compare=False)

    @classmethod
    def parse(cls, value: DataKind | str, what: str = "data.kind") -> DataKind:
        """The registered kind called ``value``, or a ValueError listing the kinds."""
        if isinstance(value, DataKind):
            return value
        if value not in KINDS:
            raise ValueError(
                f"unknown {what} {value!r}; valid kinds: {', '.join(map(repr, KINDS))}"
            )
        return KINDS[value]

    def __str__(self) -> str:
        return self.name


#: every registered kind, by name
KINDS: dict[str, DataKind] = {}


def register(kind: DataKind) -> DataKind:
    """Add ``kind`` to ``KINDS`` (each name once)."""
    if kind.name in KINDS:
        raise ValueError(f"data kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind
    return kind


def points_scores(samples: Tensor, labels: Tensor | None, data: Dataset, seed: int):
    """Sliced Wasserstein and energy distance of samples [n, d] to n data points, each beside
    its floor: the same distance between two disjoint halves of the data (the halves and the
    projections fixed by ``seed``, so every sampler meets the same floor)."""
    x = data.x
    if x.ndim != 2:
        raise ValueError(
            f"sample scores need points [N, d]; these data are {list(x.shape[1:])}: look at "
            "samples with rediff sample instead"
        )
    n = samples.shape[0]
    if 2 * n > x.shape[0]:
        raise ValueError(
            f"scoring {n} samples needs at least {2 * n} data points, have {x.shape[0]}"
        )
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    ref, other = x[perm[:n]], x[perm[n : 2 * n]]

    def sw(a: Tensor) -> float:  # the same projections for samples and floor
        return metrics.sliced_wasserstein(a, ref, generator=torch.Generator().manual_seed(seed))

    return [
        metrics.Score("sliced Wasserstein", sw(samples), sw(other)),
        metrics.Score(
            "energy distance",
            metrics.energy_distance(samples, ref),
            metrics.energy_distance(other, ref),
        ),
    ]
