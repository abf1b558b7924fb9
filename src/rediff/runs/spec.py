"""What a trained model needs to know about its data, written into the run directory when
training starts (``run.json``), so that a run can be sampled and scored without its data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rediff import __version__
from rediff._io import atomic_write, in_run
from rediff.runs.kinds import DataKind, Dataset

#: the run directory format this rediff writes (1: before run.json existed)
FORMAT = 2


@dataclass(frozen=True)
class DataSpec:
    """The data of a run: its ``kind``, the ``shape`` of one sample, the number of ``levels``
    of quantised data (None: continuous) and of label ``classes`` (0: unlabelled)."""

    kind: DataKind
    shape: tuple[int, ...]
    levels: int | None
    classes: int

    @classmethod
    def of(cls, kind: DataKind, data: Dataset) -> DataSpec:
        return cls(kind, tuple(data.x.shape[1:]), data.levels, data.classes)

    def to_json(self) -> str:
        spec = {
            "kind": self.kind.name,
            "shape": list(self.shape),
            "levels": self.levels,
            "classes": self.classes,
        }
        return json.dumps({"format": FORMAT, "rediff": __version__, "data": spec}, indent=1)

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
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{where} is not a rediff run description ({error})") from None

    def save(self, run: Path) -> Path:
        path = in_run(run, "run.json")
        return atomic_write(path, lambda tmp: Path(tmp).write_text(self.to_json() + "\n"))

    @classmethod
    def load(cls, run: Path) -> DataSpec:
        path = in_run(run, "run.json")
        if not path.is_file():
            raise ValueError(
                f"{run} was written by an older rediff (it has no run.json): convert it once "
                f"with `rediff upgrade {run}` (it reads the run's data to record their shape)"
            )
        return cls.from_json(path.read_text(), path)
