"""Configs are data: typed dataclasses, serialised to JSON, unknown keys are an error.

Every model family defines ``@dataclass class XConfig(ModelConfig)`` with a ``family`` name and
named presets; ``XConfig.from_dict`` rejects keys it does not know, naming them and the valid ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self

from attnkit.jsonconfig import JsonConfig

__all__ = ["ModelConfig"]


@dataclasses.dataclass
class ModelConfig(JsonConfig):
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
        cls.check_keys(data)
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Self:
        """A named config, optionally with some fields overridden."""
        if name not in cls.presets:
            raise ValueError(f"unknown {cls.family} preset {name!r}; valid: {sorted(cls.presets)}")
        return cls.from_dict({**cls.presets[name], **overrides})
