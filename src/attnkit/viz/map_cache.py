"""The explorer server's store of captured maps for inputs too long to send whole.

A long input is shown through views (:mod:`attnkit.viz.views`) of one layer at a time, and
every zoom, pan or head change asks for another view of the same maps. :class:`MapCache`
captures a layer once — all its heads, one forward pass that asks only that layer for its
weights — and keeps the maps for the next request:

* key: ``(text, decoder_text, kind, layer)``; the client sends its text with every request,
  so nothing is lost when an entry is dropped (the next request captures again) and the
  server holds no per-client state;
* value: :class:`LayerMaps`, the heads ``(H, Lq, Lk)`` and their mean ``(Lq, Lk)`` in float16
  (every weight within 0.05% of its float32 value, far below what a colour shows), plus
  the capture's metadata (tokens, truncation, warnings);
* size: ``(H + 1) · Lq · Lk · 2`` bytes an entry; entries are dropped least recently used
  first to stay within ``budget`` bytes. A layer whose maps alone exceed the budget is a
  :class:`BudgetError` naming the sizes and the ways out.

Captures take turns (one lock): the model is shared, and two requests for the same new
layer capture it once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from attnkit.viz.capture import capture, input_lengths
from attnkit.viz.result import AttentionCapture
from attnkit.viz.sites import lengths

__all__ = ["LayerMaps", "MapCache", "BudgetError", "layer_bytes"]

_MIB = 2**20


class BudgetError(ValueError):
    """One layer's maps of this input would not fit the cache's memory budget."""


@dataclass
class LayerMaps:
    """All heads of one layer of one kind, for one input."""

    kind: str
    layer: int
    heads: Tensor  # (H, Lq, Lk) float16
    mean: Tensor  # (Lq, Lk) float16, the mean of all H heads
    meta: AttentionCapture  # tokens, truncation, warnings, model info (weights dropped)

    @property
    def nbytes(self) -> int:
        return (self.heads.numel() + self.mean.numel()) * self.heads.element_size()

    def map(self, head: int | str, heads: list[int] | None = None) -> Tensor:
        """``(Lq, Lk)`` of one head, the mean of all heads (``"mean"``), or ``(h, Lq, Lk)``
        of the ``heads`` whose mean is wanted (the views average over the window only)."""
        if head != "mean":
            return self.heads[head]
        if heads is None or len(heads) == self.heads.shape[0]:
            return self.mean
        return self.heads[heads]


def layer_bytes(n_heads: int, lq: int, lk: int) -> int:
    """Bytes of one :class:`LayerMaps` entry: ``(H + 1) · Lq · Lk · 2``."""
    return (n_heads + 1) * lq * lk * 2


class MapCache:
    """Captured layers of recent inputs, least recently used dropped first (module
    docstring)."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, max_tokens: int, budget: int):
        if budget < 1:
            raise ValueError(f"budget must be >= 1 byte, got {budget}")
        self.model, self.tokenizer = model, tokenizer
        self.max_tokens, self.budget = max_tokens, budget
        self._entries: OrderedDict[tuple, LayerMaps] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, text: str, decoder_text: str | None, kind: str, layer: int,
            n_heads: int) -> LayerMaps:
        """The maps of ``layer`` of ``kind`` (``n_heads`` heads) for this input, captured
        now unless kept from an earlier request."""
        key = (text, decoder_text, kind, layer)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
            n, n_dec = input_lengths(self.model, self.tokenizer, text,
                                     decoder_text=decoder_text, max_tokens=self.max_tokens)
            lq, lk = lengths(n, n_dec or 1)[kind]
            need = max(layer_bytes(n_heads, lq, lk), n_heads * lq * lk * 4)  # kept, captured
            if need > self.budget:
                raise BudgetError(
                    f"one {kind} layer of this input ({n_heads} heads x {lq} x {lk} tokens) "
                    f"needs {need / _MIB:.0f} MiB, over the server's memory budget of "
                    f"{self.budget / _MIB:.0f} MiB: shorten the text, or restart the server "
                    "with a smaller --max-tokens or a larger --memory-budget")
            cap = capture(self.model, self.tokenizer, text, kinds=[kind],
                          layers={kind: [layer]}, max_tokens=self.max_tokens,
                          decoder_text=decoder_text, memory_budget=self.budget, top_k=0)
            w = cap.weights.pop(kind)[0]  # (H, Lq, Lk) float32
            entry = LayerMaps(kind, layer, w.half(), w.mean(0).half(), cap)
            del w
            cap.weights.clear()
            self._entries[key] = entry
            while self.nbytes > self.budget and len(self._entries) > 1:
                self._entries.popitem(last=False)
            return entry
