"""What a trained model needs to know about its data, written into the run directory when
training starts (``run.json``), so that a run can be sampled and scored without its data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rediff import __version__
from rediff._io import atomic_write, in_run
from rediff._tensor import Tensor
from rediff.data.text import Tokenizer
from rediff.runs.kinds import DataKind, Dataset

#: the run directory format this rediff writes (1: before run.json existed)
FORMAT = 2


@dataclass(frozen=True)
class DataSpec:
    """The data of a run: its ``kind``, the ``shape`` of one sample, the number of ``levels``
    of quantised data (None: continuous), of label ``classes`` (0: unlabelled), whether the
    data are ``integer`` categories rather than values, whether their values are
    ``ordinal``, and for text the ``tokenizer`` (its vocabulary is saved with the run)."""

    kind: DataKind
    shape: tuple[int, ...]
    levels: int | None
    classes: int
    integer: bool = False
    ordinal: bool = True
    tokenizer: Tokenizer | None = None

    @classmethod
    def of(cls, kind: DataKind, data: Dataset) -> DataSpec:
        shape = tuple(data.x.shape[1:])
        return cls(
            kind, shape, data.levels, data.classes, data.integer, data.ordinal, data.tokenizer
        )

    def check(self, data: Dataset, what: str) -> Dataset:
        """``data`` if it is tokenised as the run's data were, else a ValueError."""
        if data.tokenizer != self.tokenizer:
            raise ValueError(
                f"{what} are tokenised differently from the run's data ({data.tokenizer} now, "
                f"{self.tokenizer} in the run): the text changed since training"
            )
        return data

    def values(self, categories: Tensor) -> Tensor:
        """A discrete model's integer samples in the data's own form: integers as they are,
        levels as their values 2 k / (levels - 1) - 1 in [-1, 1]."""
        if self.integer:
            return categories
        return categories.float() * (2.0 / (self.levels - 1)) - 1.0

    def to_json(self) -> str:
        spec = {
            "kind": self.kind.name,
            "shape": list(self.shape),
            "levels": self.levels,
            "classes": self.classes,
            "integer": self.integer,
            "ordinal": self.ordinal,
        }
        if self.tokenizer is not None:
            spec["tokenizer"] = self.tokenizer.to_json()
        values = {"format": FORMAT, "rediff": __version__, "data": spec}
        return json.dumps(values, indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, where: Path) -> DataSpec:
        try:
            values = json.loads(text)
            if values["format"] != FORMAT:
                raise ValueError(f"format {values['format']}, this rediff reads {FORMAT}")
            spec = values["data"]
            return cls(
                DataKind.parse(spec["kind"]),
                tuple(int(n) for n in spec["shape"]),
                None if spec["levels"] is None else int(spec["levels"]),
                int(spec["classes"]),
                bool(spec.get("integer", False)),
                bool(spec.get("ordinal", True)),
                Tokenizer.from_json(spec["tokenizer"]) if "tokenizer" in spec else None,
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{where} is not a rediff run description ({error})") from None

    def save(self, run: Path) -> Path:
        path = in_run(run, "run.json")
        text = self.to_json() + "\n"
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, run: Path) -> DataSpec:
        path = in_run(run, "run.json")
        if not path.is_file():
            raise ValueError(
                f"{run} was written by an older rediff (it has no run.json): convert it once "
                f"with `rediff upgrade {run}` (it reads the run's data to record their shape)"
            )
        return cls.from_json(path.read_text(encoding="utf-8"), path)
