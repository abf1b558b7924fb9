"""Sequences of varying length, for models that change a sequence's length (insertion and
deletion): the arithmetic-progression task of Johnson et al. 2021 (generated) and the lines
of a text.

    texts = arithmetic(1000, generator=g)     # ["3,7,11,15", "12,21,30", ...]
    is_progression("3,7,11,15")               # True: >= 3 terms, one positive difference
"""

from __future__ import annotations

import itertools

import torch

#: the characters of the arithmetic task: digits and the separator
ARITHMETIC_CHARACTERS = ",0123456789"


def arithmetic(
    n: int,
    *,
    generator: torch.Generator | None = None,
    terms: tuple[int, int] = (3, 6),
    start: tuple[int, int] = (0, 30),
    step: tuple[int, int] = (1, 15),
    length: int | None = None,
) -> list[str]:
    """n progressions a, a + d, ..., a + (k - 1) d written in decimal with commas, with k,
    a and d uniform on the inclusive ranges ``terms``, ``start`` and ``step``; with
    ``length``, a draw longer than that many characters loses its last terms (never below
    ``terms[0]``: an error if even that does not fit)."""
    out = []
    for _ in range(n):
        k, a, d = (
            int(torch.randint(lo, hi + 1, (1,), generator=generator))
            for lo, hi in (terms, start, step)
        )
        values = [str(a + d * i) for i in range(k)]
        while length is not None and len(",".join(values)) > length and len(values) > terms[0]:
            values.pop()
        text = ",".join(values)
        if length is not None and len(text) > length:
            raise ValueError(
                f"a progression of {terms[0]} terms needs {len(text)} characters, more than "
                f"data.length = {length}: raise data.length"
            )
        out.append(text)
    return out


def is_progression(text: str, min_terms: int = 3) -> bool:
    """Whether ``text`` is a valid arithmetic progression: at least ``min_terms`` decimal
    integers (no leading zeros) separated by single commas, with one positive difference."""
    parts = text.split(",")
    if len(parts) < min_terms or not all(p.isdigit() and (p == "0" or p[0] != "0") for p in parts):
        return False
    values = [int(p) for p in parts]
    d = values[1] - values[0]
    return d > 0 and all(b - a == d for a, b in itertools.pairwise(values))


def lines(text: str, length: int) -> tuple[list[str], int]:
    """The non-empty lines of ``text`` (stripped) of at most ``length`` characters, and how
    many longer lines were left out."""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    short = [line for line in kept if len(line) <= length]
    return short, len(kept) - len(short)


__all__ = ["ARITHMETIC_CHARACTERS", "arithmetic", "is_progression", "lines"]
