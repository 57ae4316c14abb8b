"""Backend registry.

Each backend is a module exposing::

    NAME: str
    EXACT: bool                      # computes softmax attention exactly (auto only picks these)
    supports(req: Request) -> str | None          # None = can serve, else the reason it can't
    forward(q, k, v, *, mask, score_mod, scale, dropout_p, return_weights) -> (out, weights|None)

Inputs reach ``forward`` validated (see ``attnkit.attention.core``); GQA (Hkv < Hq) is the
backend's job.

All backends are imported with this package (a few milliseconds): dispatch is then a dict
lookup, which ``torch.compile`` traces (an import inside a traced call is a graph break).
"""

from __future__ import annotations

from types import ModuleType

from attnkit.attention.backends import (
    blocked_backend,
    flex_backend,
    linear_backend,
    math_backend,
    sdpa_backend,
)

NAMES = ("math", "sdpa", "flex", "blocked", "linear")
EXACT = ("math", "sdpa", "flex", "blocked")  # order: auto's preference among equals

_MODULES: dict[str, ModuleType] = {
    m.NAME: m for m in (math_backend, sdpa_backend, flex_backend, blocked_backend, linear_backend)}


def get(name: str) -> ModuleType:
    """The backend module called ``name``."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; valid: {', '.join(NAMES)}")
    return _MODULES[name]
