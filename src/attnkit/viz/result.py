"""The result of one attention capture, and its JSON / safetensors forms.

:class:`AttentionCapture` holds, per kind of attention, a tensor ``(layers, heads, Lq, Lk)``
restricted to the captured layers and heads (their model indices are in ``layers[kind]`` and
``heads[kind]``). Kinds: ``self`` (decoder-only and encoder-only models), ``encoder``,
``decoder`` and ``cross`` (encoder–decoder models; cross maps are ``(Lt, Ls)``: decoder queries,
encoder keys).

``to_dict()`` / ``to_json()`` give the explorer's JSON (weights as nested lists rounded to 4
decimals)::

    {"version": 1, "text", "decoder_text", "tokens", "raw_tokens", "token_ids",
     "decoder_tokens", "raw_decoder_tokens", "decoder_token_ids", "truncated",
     "n_tokens_original", "warnings", "predictions", "model": {family, architecture, n_layers,
     n_heads, kinds, layers_per_kind, heads_per_kind},
     "kinds": {kind: {"layers": [...], "heads": [...], "shape": [nl, nh, Lq, Lk],
                      "weights": weights[layer][head][q][k]}}}

``save(path)`` writes the tensors to safetensors and the rest to a JSON sidecar; ``load`` reads
that, or a directory written by ``capture(..., to_disk=DIR)`` (memory-mapped ``.npy`` files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["KINDS", "AttentionCapture", "SIDECAR"]

KINDS: tuple[str, ...] = ("self", "encoder", "decoder", "cross")
SIDECAR = "capture.json"
_TENSORS = "capture.safetensors"
VERSION = 1


@dataclass
class AttentionCapture:
    """Attention maps of one forward pass (see the module docstring for the fields)."""

    tokens: list[str]  # display strings of the (encoder) input
    weights: dict[str, Tensor]  # kind -> (n_layers_kept, n_heads_kept, Lq, Lk) float32
    layers: dict[str, list[int]]  # kind -> model layer index of each kept layer
    heads: dict[str, list[int]]  # kind -> model head index of each kept head
    token_ids: list[int] = field(default_factory=list)
    raw_tokens: list[str] = field(default_factory=list)  # tokenizer pieces, e.g. "Ġthe"
    decoder_tokens: list[str] | None = None
    decoder_token_ids: list[int] | None = None
    raw_decoder_tokens: list[str] | None = None
    text: str | None = None
    decoder_text: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    truncated: bool = False
    n_tokens_original: int = 0
    warnings: list[str] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    logits: Tensor | None = None  # (L, V) / (num_labels,) of the model output when small
    path: str | None = None  # the to_disk directory backing ``weights``, if any

    # ---- access -------------------------------------------------------------------------
    @property
    def kinds(self) -> list[str]:
        """Captured kinds in canonical order."""
        return [k for k in KINDS if k in self.weights]

    def axes(self, kind: str) -> tuple[list[str], list[str]]:
        """``(query tokens, key tokens)`` of ``kind``."""
        dec = self.decoder_tokens if self.decoder_tokens is not None else self.tokens
        if kind == "cross":
            return dec, self.tokens
        if kind == "decoder":
            return dec, dec
        return self.tokens, self.tokens

    def _check_kind(self, kind: str) -> Tensor:
        if kind not in self.weights:
            raise KeyError(f"no {kind!r} attention in this capture; captured: {self.kinds}")
        return self.weights[kind]

    def layer(self, kind: str, layer: int) -> Tensor:
        """``(n_heads_kept, Lq, Lk)`` of model layer ``layer`` (negative counts from the end of
        the kept layers)."""
        w = self._check_kind(kind)
        return w[_position(self.layers[kind], layer, "layer", kind)]

    def head(self, kind: str, layer: int, head: int) -> Tensor:
        """``(Lq, Lk)`` map of model layer ``layer``, model head ``head``."""
        maps = self.layer(kind, layer)
        return maps[_position(self.heads[kind], head, "head", kind)]

    def to_bertviz(self) -> dict[str, Any]:
        """Keyword arguments for ``bertviz.head_view`` / ``model_view``: per-layer
        ``(1, H, L, L)`` tensors plus tokens (:func:`attnkit.viz.bertviz.to_bertviz`)."""
        from attnkit.viz.bertviz import to_bertviz

        return to_bertviz(self)

    @property
    def nbytes(self) -> int:
        """Bytes held by the weight tensors."""
        return sum(w.numel() * w.element_size() for w in self.weights.values())

    # ---- JSON ---------------------------------------------------------------------------
    def to_dict(self, decimals: int = 4, include_weights: bool = True) -> dict[str, Any]:
        """JSON-safe dict (module docstring); weights rounded to ``decimals``."""
        kinds: dict[str, Any] = {}
        for k in self.kinds:
            w = self.weights[k]
            entry: dict[str, Any] = {"layers": list(self.layers[k]), "heads": list(self.heads[k]),
                                     "shape": list(w.shape)}
            if include_weights:
                entry["weights"] = torch.round(w.double(), decimals=decimals).tolist()
            kinds[k] = entry
        return {
            "version": VERSION, "text": self.text, "decoder_text": self.decoder_text,
            "tokens": list(self.tokens), "raw_tokens": list(self.raw_tokens),
            "token_ids": list(self.token_ids), "decoder_tokens": self.decoder_tokens,
            "raw_decoder_tokens": self.raw_decoder_tokens,
            "decoder_token_ids": self.decoder_token_ids, "truncated": self.truncated,
            "n_tokens_original": self.n_tokens_original, "warnings": list(self.warnings),
            "predictions": self.predictions, "model": self.model, "kinds": kinds,
        }

    def to_json(self, decimals: int = 4, indent: int | None = None,
                include_weights: bool = True) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict(decimals, include_weights), indent=indent,
                          ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], weights: dict[str, Tensor] | None = None
                  ) -> AttentionCapture:
        """Inverse of :meth:`to_dict`; ``weights`` (kind -> tensor) override the JSON lists."""
        weights = dict(weights or {})
        layers, heads = {}, {}
        for k, entry in data.get("kinds", {}).items():
            layers[k], heads[k] = list(entry["layers"]), list(entry["heads"])
            if k not in weights:
                if "weights" not in entry:
                    raise ValueError(f"no weights for {k!r} attention in the data")
                weights[k] = torch.tensor(entry["weights"], dtype=torch.float32).reshape(
                    entry["shape"])
        return cls(
            tokens=list(data["tokens"]), weights=weights, layers=layers, heads=heads,
            token_ids=list(data.get("token_ids", [])), raw_tokens=list(data.get("raw_tokens", [])),
            decoder_tokens=data.get("decoder_tokens"),
            decoder_token_ids=data.get("decoder_token_ids"),
            raw_decoder_tokens=data.get("raw_decoder_tokens"), text=data.get("text"),
            decoder_text=data.get("decoder_text"), model=dict(data.get("model", {})),
            truncated=bool(data.get("truncated", False)),
            n_tokens_original=int(data.get("n_tokens_original", len(data["tokens"]))),
            warnings=list(data.get("warnings", [])), predictions=list(data.get("predictions", [])))

    # ---- files --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``<stem>.safetensors`` (tensors ``weights.<kind>``, ``logits``) and
        ``<stem>.json`` (everything else) when ``path`` ends in ``.safetensors``/``.json``;
        otherwise ``path`` is a directory receiving ``capture.safetensors`` + ``capture.json``.
        Returns the JSON sidecar's path (what :meth:`load` takes, as does the directory)."""
        from safetensors.torch import save_file

        p = Path(path)
        if p.suffix in (".safetensors", ".json"):
            st, js = p.with_suffix(".safetensors"), p.with_suffix(".json")
            st.parent.mkdir(parents=True, exist_ok=True)
        else:
            p.mkdir(parents=True, exist_ok=True)
            st, js = p / _TENSORS, p / SIDECAR
        tensors = {f"weights.{k}": w.to(torch.float32).contiguous() for k, w in
                   self.weights.items()}
        if self.logits is not None:
            tensors["logits"] = self.logits.contiguous()
        save_file(tensors, str(st), metadata={"format": "pt", "attnkit": "attention-capture"})
        self.write_sidecar(js, {"format": "safetensors", "file": st.name})
        return js

    def write_sidecar(self, path: Path, storage: dict[str, Any]) -> None:
        """The JSON metadata (no weights) plus a ``storage`` entry saying where tensors are."""
        meta = self.to_dict(include_weights=False)
        meta["storage"] = storage
        path.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> AttentionCapture:
        """Read a capture written by :meth:`save` (the directory, the ``.json`` or the
        ``.safetensors`` path) or by ``capture(..., to_disk=DIR)`` (the directory; weights stay
        memory-mapped)."""
        p = Path(path)
        js = p / SIDECAR if p.is_dir() else p.with_suffix(".json")
        if not js.is_file():
            raise FileNotFoundError(f"no capture metadata at {js}")
        meta = json.loads(js.read_text(encoding="utf-8"))
        storage = meta.get("storage", {})
        weights: dict[str, Tensor] = {}
        logits = None
        if storage.get("format") == "safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(js.parent / storage["file"]))
            weights = {k.removeprefix("weights."): t for k, t in tensors.items()
                       if k.startswith("weights.")}
            logits = tensors.get("logits")
        elif storage.get("format") == "npy":
            weights = {k: open_npy(js.parent / f) for k, f in storage["files"].items()}
        else:
            raise ValueError(f"{js}: unknown storage {storage!r}")
        cap = cls.from_dict(meta, weights)
        cap.logits = logits
        if storage.get("format") == "npy":
            cap.path = str(js.parent)
        return cap


def open_npy(path: Path) -> Tensor:
    """A float32 ``.npy`` file as a memory-mapped tensor (copy-on-write: writes stay in RAM)."""
    import numpy as np

    return torch.from_numpy(np.load(path, mmap_mode="c"))


def _position(kept: list[int], index: int, what: str, kind: str) -> int:
    """Where model ``what`` (layer / head) ``index`` sits among the ``kept`` ones (negative
    ``index``: counted from the end of ``kept``); ``KeyError`` if it was not captured."""
    if index < 0:
        index = kept[index] if -len(kept) <= index else index
    if index not in kept:
        raise KeyError(f"{what} {index} of {kind!r} attention was not captured; kept: {kept}")
    return kept.index(index)
