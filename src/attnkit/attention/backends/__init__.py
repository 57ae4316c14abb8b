"""Backend registry.

Each backend is a module exposing::

    NAME: str
    EXACT: bool                      # computes softmax attention exactly (auto only picks these)
    supports(req: Request) -> str | None          # None = can serve, else the reason it can't
    forward(q, k, v, *, mask, score_mod, scale, dropout_p, return_weights) -> (out, weights|None)

Inputs reach ``forward`` validated (see ``attnkit.attention.core``); GQA (Hkv < Hq) is the
backend's job.
"""

from __future__ import annotations

import importlib
from types import ModuleType

NAMES = ("math", "sdpa", "flex", "blocked", "linear")
EXACT = ("math", "sdpa", "flex", "blocked")  # order: auto's preference among equals

_loaded: dict[str, ModuleType] = {}


def get(name: str) -> ModuleType:
    """The backend module called ``name``."""
    if name not in _loaded:
        if name not in NAMES:
            raise ValueError(f"unknown backend {name!r}; valid: {', '.join(NAMES)}")
        _loaded[name] = importlib.import_module(f"{__name__}.{name}_backend")
    return _loaded[name]
