"""``data.kind = "text"``: text as sequences of ``data.length`` tokens. ``data.path``: a
UTF-8 .txt file or a folder of them; left empty, the text of Python's documentation topics
(``pydoc_data.topics``, shipped with CPython: nothing to download). ``data.tokenizer``:
``char`` (one token per distinct character of the whole text; the vocabulary is saved in the
run's run.json) or ``byte`` (the 256 byte values of UTF-8). The last 10% of the text is held
out (``rediff nll`` scores it); the rest is cut into non-overlapping sequences. Samples are
written as text."""

from __future__ import annotations

from pathlib import Path

from rediff._tensor import Tensor
from rediff.data.text import Tokenizer, pydoc_corpus, read_text, sequences, split_text
from rediff.runs.kinds.base import DataConfig, DataKind, Dataset, register


def _corpus(path: str) -> str:
    return read_text(path) if path else pydoc_corpus()


def _split(config: DataConfig, part: int) -> Dataset:
    """The training (part 0) or held-out (part 1) sequences, tokenised by the whole text's
    tokenizer."""
    text = _corpus(config.path)
    tokenizer = Tokenizer.fit(text, config.tokenizer)
    ids = tokenizer.encode(split_text(text)[part])
    return Dataset(
        sequences(ids, config.length), levels=tokenizer.size, ordinal=False, tokenizer=tokenizer
    )


def text_header(title: str, caption: str) -> list[str]:
    """The first lines of a text file of samples: its title, its caption, a blank line."""
    return [f"# {title}", f"# {caption}" if caption else "#", ""]


def write_text(
    samples: Tensor,
    path: Path,
    *,
    title: str,
    tokenizer: Tokenizer,
    caption: str = "",
    labels: Tensor | None = None,
    cols: int | None = None,
) -> None:
    """Token samples [n, L] decoded, one block per sample, under a title and caption."""
    lines = text_header(title, caption)
    for i, row in enumerate(samples):
        label = "" if labels is None else f" (class {int(labels[i])})"
        lines += [f"=== sample {i + 1}{label} ===", tokenizer.decode(row), ""]
    Path(path).write_text("\n".join(lines), encoding="utf-8")


KIND = register(
    DataKind(
        "text",
        lambda config, seed: _split(config, 0),
        held_out=lambda config, seed: _split(config, 1),
        picture=write_text,
        suffix=".txt",
        default_n=lambda data: 16,
    )
)
