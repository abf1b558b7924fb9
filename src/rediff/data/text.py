"""Text as token sequences: a character-level (or byte-level) tokenizer, the corpus that ships
with every CPython (``pydoc_data.topics``: the text of Python's documentation topics, about
465,000 characters, no download), a deterministic train / held-out split and fixed-length
sequences.

    tokenizer = Tokenizer.fit(text)             # one token per distinct character
    ids = tokenizer.encode("def f(x):")         # LongTensor; unknown characters: an error
    tokenizer.decode(ids)                        # the text back
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rediff._choices import Choice
from rediff._tensor import Tensor


class TokenizerKind(Choice, noun="data.tokenizer"):
    CHAR = "char"  # one token per distinct character of the corpus (its vocabulary)
    BYTE = "byte"  # the 256 byte values of the UTF-8 encoding (no vocabulary, nothing unknown)


@dataclass(frozen=True)
class Tokenizer:
    """A character tokenizer over ``characters`` (token i is characters[i]), or the byte
    tokenizer (``characters`` empty)."""

    kind: TokenizerKind
    characters: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", TokenizerKind.parse(self.kind))
        if self.kind is TokenizerKind.CHAR and len(set(self.characters)) != len(self.characters):
            raise ValueError("a character vocabulary must list each character once")
        if self.kind is TokenizerKind.CHAR and len(self.characters) < 2:
            raise ValueError("a character vocabulary needs at least 2 characters")

    @classmethod
    def fit(cls, text: str, kind: TokenizerKind | str = TokenizerKind.CHAR) -> Tokenizer:
        """The tokenizer of ``text``: its distinct characters in code-point order (char), or
        the byte tokenizer."""
        kind = TokenizerKind.parse(kind)
        return cls(kind, "".join(sorted(set(text))) if kind is TokenizerKind.CHAR else "")

    @property
    def size(self) -> int:
        """The number of tokens K."""
        return len(self.characters) if self.kind is TokenizerKind.CHAR else 256

    def encode(self, text: str) -> Tensor:
        """Token ids [len] of ``text``; characters outside the vocabulary are an error that
        names them (never dropped)."""
        if self.kind is TokenizerKind.BYTE:
            return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
        index = {c: i for i, c in enumerate(self.characters)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise ValueError(
                f"{len(unknown)} character(s) outside the run's vocabulary of {self.size}: "
                f"{shown}; leave them out, or train with data.tokenizer = 'byte'"
            )
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids: Tensor) -> str:
        """The text of token ids [len] (bytes that do not form UTF-8 show as U+FFFD)."""
        values = [int(i) for i in ids.reshape(-1)]
        if self.kind is TokenizerKind.BYTE:
            return bytes(values).decode("utf-8", errors="replace")
        return "".join(self.characters[i] for i in values)

    def to_json(self) -> dict:
        return {"kind": self.kind.value, "characters": self.characters}

    @classmethod
    def from_json(cls, values: dict) -> Tokenizer:
        return cls(values["kind"], values.get("characters", ""))

    def __repr__(self) -> str:
        return f"Tokenizer({self.kind.value}, {self.size} tokens)"


def pydoc_corpus() -> str:
    """The text of Python's documentation topics (``pydoc_data.topics``), topics in sorted
    order: the same string on every machine with the same CPython."""
    from pydoc_data.topics import topics

    return "".join(topics[name] for name in sorted(topics))


def read_text(path: str | Path) -> str:
    """The text of a .txt file, or of every .txt file in a folder (sorted, joined by a
    newline); UTF-8, with a clear error for anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data.path {path} does not exist")
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path} holds no .txt files")
    parts = []
    for file in files:
        try:
            parts.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(f"{file} is not UTF-8 text ({error.reason})") from None
    return "\n".join(parts)


def split_text(text: str, held_out: float = 0.1) -> tuple[str, str]:
    """(train, held-out): the last ``held_out`` fraction of the text is held out (contiguous,
    so no sequence straddles both)."""
    cut = round(len(text) * (1.0 - held_out))
    return text[:cut], text[cut:]


def sequences(ids: Tensor, length: int) -> Tensor:
    """Non-overlapping sequences [N, length] of a token stream (the remainder left out)."""
    n = ids.numel() // length
    if n < 1:
        raise ValueError(
            f"the text has {ids.numel()} tokens, fewer than one sequence of data.length = "
            f"{length}; use more text or a shorter data.length"
        )
    return ids[: n * length].reshape(n, length)


__all__ = [
    "Tokenizer",
    "TokenizerKind",
    "pydoc_corpus",
    "read_text",
    "sequences",
    "split_text",
]
