"""Typed choices (DESIGN.md, style rule 5): string names are parsed once, at construction.

Every choice is a ``Choice`` (a str Enum), parsed by the one ``Choice.parse``, whose error
names the choice and lists the valid values:

    class Spacing(Choice): ...                        # "unknown spacing 'x'; valid spacings: ..."
    class Target(Choice, noun="prediction target"): ...
"""

from __future__ import annotations

import re
from enum import Enum
from typing import TypeVar

C = TypeVar("C", bound="Choice")


class Choice(str, Enum):
    """A named choice. The noun in messages is the class name in words (``TimeSampler`` ->
    "time sampler") unless the class is declared with ``noun=``."""

    def __init_subclass__(cls, noun: str | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._noun = noun or re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()

    @classmethod
    def parse(cls: type[C], value: C | str, what: str | None = None) -> C:
        """``value`` as a member, or a ValueError naming it (``what``, default the class's
        noun; a config key such as "loss.kind") and listing the valid values: "unknown
        prediction target 'noise'; valid prediction targets: 'eps', 'x0', ..."."""
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(repr(m.value) for m in cls)
            what = what or cls._noun
            plural = "values" if "." in what else f"{what}s"  # a config key: "valid values"
            raise ValueError(f"unknown {what} {value!r}; valid {plural}: {valid}") from None

    def __str__(self) -> str:
        return self.value
