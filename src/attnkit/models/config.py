"""Configs are data: typed dataclasses, serialised to JSON, unknown keys are an error.

Every model family defines ``@dataclass class XConfig(ModelConfig)`` with a ``family`` name and
named presets; ``XConfig.from_dict`` rejects keys it does not know, naming them and the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Self

__all__ = ["ModelConfig"]


@dataclasses.dataclass
class ModelConfig:
    """Base class of every model config."""

    family: ClassVar[str] = "base"
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        data = dict(data)
        fam = data.pop("family", cls.family)
        if fam != cls.family:
            raise ValueError(f"config is for family {fam!r}, expected {cls.family!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} keys: {unknown}; valid keys: {sorted(names)}"
            )
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> Self:
        p = Path(path_or_text)
        text = p.read_text() if (isinstance(path_or_text, Path) or not str(path_or_text).lstrip()
                                 .startswith("{")) else str(path_or_text)
        return cls.from_dict(json.loads(text))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Self:
        """A named config, optionally with some fields overridden."""
        if name not in cls.presets:
            raise ValueError(f"unknown {cls.family} preset {name!r}; valid: {sorted(cls.presets)}")
        return cls.from_dict({**cls.presets[name], **overrides})

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)
