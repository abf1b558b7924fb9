"""Sequences of varying length, for insertion/deletion models (``schedule.kind = "insdel"``):
rows [N, data.length] of tokens, padded with -1 after each sequence's end.

``data.kind = "arithmetic"``: ``data.n`` arithmetic progressions (Johnson et al. 2021's
task: "3,7,11,15"; 3-6 terms, first term 0-30, difference 1-15) of at most ``data.length``
characters, drawn with the run's seed (the held-out set: another draw); ``rediff eval``
reports the fraction of samples that are valid progressions.

``data.kind = "lines"``: the non-empty lines of a text (``data.path``: a UTF-8 .txt file or
a folder of them; empty: Python's documentation topics), each a sequence of characters
(``data.tokenizer``); lines longer than ``data.length`` are left out (a warning says how
many); the last 10% of the lines are held out.

Samples are written as text, one sequence per line.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from rediff._tensor import Tensor
from rediff.data.sequences import ARITHMETIC_CHARACTERS, arithmetic, is_progression, lines
from rediff.data.text import Tokenizer, TokenizerKind, pydoc_corpus, read_text
from rediff.discrete.insdel_model import padded, sequences
from rediff.metrics import Score
from rediff.runs.kinds.base import DataConfig, DataKind, Dataset, register
from rediff.runs.kinds.text import text_header


def _dataset(texts: list[str], tokenizer: Tokenizer, length: int) -> Dataset:
    rows = [tokenizer.encode(text).numpy() for text in texts]
    return Dataset(padded(rows, length), levels=tokenizer.size, ordinal=False, tokenizer=tokenizer)


def _arithmetic(config: DataConfig, seed: int) -> Dataset:
    """``data.n`` progressions of at most ``data.length`` characters (seed: the draw)."""
    generator = torch.Generator().manual_seed(seed)
    texts = arithmetic(config.n, generator=generator, length=config.length)
    return _dataset(texts, Tokenizer.fit(ARITHMETIC_CHARACTERS), config.length)


def _texts(samples: Tensor, tokenizer: Tokenizer) -> list[str]:
    return [tokenizer.decode(torch.as_tensor(row)) for row in sequences(samples)]


def _progressions(samples: Tensor, labels, reference: Dataset, seed: int) -> list[Score]:
    """The fraction of samples that are valid progressions (>= 3 terms, one positive
    difference) and how many distinct lengths they have, each beside the training data's."""
    texts = _texts(samples, reference.tokenizer)
    real = _texts(reference.x, reference.tokenizer)
    valid = [float(np.mean([is_progression(t) for t in group])) for group in (texts, real)]
    kinds = [float(len({len(t) for t in group})) for group in (texts, real)]
    return [Score("valid progressions", *valid), Score("distinct lengths", *kinds)]


def _lines(config: DataConfig, part: int) -> Dataset:
    """The training (part 0) or held-out (part 1) lines, tokenised by the whole text's
    tokenizer."""
    text = read_text(config.path) if config.path else pydoc_corpus()
    kept, dropped = lines(text, config.length)
    if dropped:
        warnings.warn(
            f"{dropped} of {len(kept) + dropped} lines are longer than data.length = "
            f"{config.length} characters and are left out",
            stacklevel=2,
        )
    if len(kept) < 10:
        raise ValueError(
            f"the text has {len(kept)} lines of at most data.length = {config.length} "
            "characters; use more text or a larger data.length"
        )
    tokenizer = Tokenizer.fit("".join(kept), config.tokenizer)
    cut = round(0.9 * len(kept))
    return _dataset(kept[:cut] if part == 0 else kept[cut:], tokenizer, config.length)


def write_lines(
    samples: Tensor,
    path: Path,
    *,
    title: str,
    tokenizer: Tokenizer,
    caption: str = "",
    labels: Tensor | None = None,
    cols: int | None = None,
) -> None:
    """Samples [n, L] (-1 after each end) as text, one per line, under a title and caption;
    an empty sample shows as an empty line."""
    lines = text_header(title, caption) + _texts(samples, tokenizer)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _check_arithmetic(config: DataConfig) -> None:
    if config.tokenizer is not TokenizerKind.CHAR:
        raise ValueError(
            "data.kind = 'arithmetic' has its own characters: leave data.tokenizer out"
        )


ARITHMETIC = register(
    DataKind(
        "arithmetic",
        _arithmetic,
        check=_check_arithmetic,
        held_out=lambda config, seed: _arithmetic(config, seed + 1),
        score=_progressions,
        picture=write_lines,
        suffix=".txt",
        default_n=lambda data: 256,
        variable_length=True,
    )
)

LINES = register(
    DataKind(
        "lines",
        lambda config, seed: _lines(config, 0),
        held_out=lambda config, seed: _lines(config, 1),
        picture=write_lines,
        suffix=".txt",
        default_n=lambda data: 32,
        variable_length=True,
    )
)
