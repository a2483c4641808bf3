"""A base for dataclasses saved as JSON in run folders (``training_config.json``, ``metrics.json``).

Reading ignores keys the dataclass does not know, so that a folder written by a newer aa-deploy (with
more keys) still loads in an older one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

_R = TypeVar("_R", bound="JsonRecord")


class JsonRecord:
    """``to_dict``/``from_dict``/``load`` for a dataclass; unknown keys are ignored when reading."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_R], data: dict[str, Any]) -> _R:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls: type[_R], path: str | Path) -> _R:
        return cls.from_dict(json.loads(Path(path).read_text()))
