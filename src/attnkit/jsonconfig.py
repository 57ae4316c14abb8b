"""Configs are data: dataclasses with a strict JSON round trip (unknown keys are an error that
names them and the valid ones). The base of :class:`~attnkit.models.config.ModelConfig` and
:class:`~attnkit.train.config.TrainConfig`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Self

__all__ = ["JsonConfig", "read_json"]


def read_json(path: str | Path, *, kind: type | None = dict) -> Any:
    """The JSON value in ``path``, with one clear ``ValueError`` naming the file when it is
    not UTF-8 text, not JSON, or (``kind``) not a JSON object / array as required;
    ``FileNotFoundError`` when it is missing."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"file missing: {p}")
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{p} is not UTF-8 text (byte offset {e.start}): not a JSON file") \
            from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON ({e.msg} at line {e.lineno} column "
                         f"{e.colno})") from None
    if kind is not None and not isinstance(data, kind):
        want = {dict: "a JSON object", list: "a JSON array"}.get(kind, kind.__name__)
        raise ValueError(f"{p} must hold {want}, got {type(data).__name__}")
    return data


class JsonConfig:
    """Mixin for ``@dataclass`` configs: ``to_dict``/``from_dict``, ``to_json``/``from_json``
    (a path or JSON text), ``replace``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        cls.check_keys(data)
        return cls(**data)

    @classmethod
    def check_keys(cls, data: dict[str, Any]) -> None:
        """Raise ``ValueError`` naming the keys of ``data`` that are not fields of ``cls``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {unknown}; valid keys: "
                             f"{sorted(names)}")

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON text (sorted keys); also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> Self:
        """From a JSON file, or from JSON text (a string starting with ``{``)."""
        is_text = isinstance(path_or_text, str) and path_or_text.lstrip().startswith("{")
        text = path_or_text if is_text else Path(path_or_text).read_text()
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)
