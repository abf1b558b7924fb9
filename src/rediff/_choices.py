"""Typed choices (DESIGN.md, style rule 5): string names are parsed once, at construction."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=Enum)


def parse_choice(kind: type[E], value: E | str, what: str) -> E:
    """``value`` as a member of ``kind``, or a ValueError naming it and listing valid names.

    Example message: "unknown prediction target 'noise'; valid: 'x0', 'eps', ...".
    """
    try:
        return kind(value)
    except ValueError:
        valid = ", ".join(repr(m.value) for m in kind)
        raise ValueError(f"unknown {what} {value!r}; valid {what}s: {valid}") from None
