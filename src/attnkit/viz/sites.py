"""Where a model's attention lives, and what capturing it costs.

An attnkit model is built from :class:`~attnkit.models.stacks.TransformerStack` s whose layers
each hold a :class:`~attnkit.attention.multihead.MultiHeadAttention` (``attn``) and, in a
decoder with cross-attention, a second one (``cross_attn``). :func:`attention_sites` lists them
by *kind*: ``self`` (one stack: GPT, BERT, ViT), ``encoder`` / ``decoder`` / ``cross`` (two
stacks: T5, the original Transformer).

Memory of a capture, float32 maps: ``Σ_kinds layers · heads · Lq · Lk · 4`` bytes
(:func:`estimate_bytes`), with ``Lq = Lk = L`` (self, encoder), ``Lq = Lk = Lt`` (decoder),
``Lq = Lt, Lk = L`` (cross).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from attnkit.models.stacks import TransformerStack
from attnkit.viz.result import KINDS

__all__ = ["Selection", "Site", "attention_sites", "model_info", "select", "plan",
           "estimate_bytes", "lengths"]

Selection = int | Sequence[int] | Mapping[str, int | Sequence[int] | None] | None


@dataclass(frozen=True)
class Site:
    """One attention module: its kind, layer index within its stack, and head count."""

    kind: str
    layer: int
    module: nn.Module
    n_heads: int


def attention_sites(model: nn.Module) -> list[Site]:
    """Every attention module of an attnkit model. A model with one stack has ``self``
    attention; with two, the stack with cross-attention is the ``decoder`` (its cross
    modules are ``cross``) and the other the ``encoder``."""
    stacks = [m for m in model.modules() if isinstance(m, TransformerStack)]
    if not stacks:
        raise TypeError(f"{type(model).__name__} has no TransformerStack: capture works on "
                        "attnkit models (CausalLM, BERT, Seq2SeqLM, ViT)")
    sites = []
    for st in stacks:
        has_cross = any(hasattr(layer, "cross_attn") for layer in st.layers)
        kind = "self" if len(stacks) == 1 else ("decoder" if has_cross else "encoder")
        for i, layer in enumerate(st.layers):
            sites.append(Site(kind, i, layer.attn, layer.attn.n_heads))
            if hasattr(layer, "cross_attn"):
                sites.append(Site("cross", i, layer.cross_attn, layer.cross_attn.n_heads))
    return sites


def model_info(model: nn.Module) -> dict[str, Any]:
    """JSON-safe summary: family, architecture, kinds, layers/heads per kind; ``n_layers`` /
    ``n_heads`` are those of the first kind (self or encoder)."""
    sites = attention_sites(model)
    kinds = [k for k in KINDS if any(s.kind == k for s in sites)]
    n_layers = {k: sum(s.kind == k for s in sites) for k in kinds}
    n_heads = {k: next(s.n_heads for s in sites if s.kind == k) for k in kinds}
    cfg = getattr(model, "config", None)
    return {"family": getattr(cfg, "family", type(model).__name__),
            "architecture": type(model).__name__, "kinds": kinds,
            "n_layers": n_layers[kinds[0]], "n_heads": n_heads[kinds[0]],
            "layers_per_kind": n_layers, "heads_per_kind": n_heads}


def select(spec: Selection, kind: str, n: int, what: str) -> list[int]:
    """Sorted model indices of ``spec`` (None = all, int, list, negative from the end, or a
    dict per kind) for a kind with ``n`` layers/heads (``what``)."""
    if isinstance(spec, Mapping):
        spec = spec.get(kind)
    if spec is None:
        return list(range(n))
    items = [spec] if not isinstance(spec, Sequence) else list(spec)
    out = set()
    for i in items:
        j = operator.index(i)
        j = j + n if j < 0 else j
        if not 0 <= j < n:
            raise ValueError(f"{what} {i} out of range for {kind!r} attention with {n} {what}s "
                             f"(valid: 0..{n - 1}, or negative from the end)")
        out.add(j)
    if not out:
        raise ValueError(f"empty {what} selection for {kind!r} attention")
    return sorted(out)


def plan(model: nn.Module, layers: Selection, heads: Selection, kinds: Sequence[str] | None
          ) -> tuple[list[Site], dict[str, list[int]], dict[str, list[int]]]:
    """All sites, and the kept layers and heads of each chosen kind."""
    sites = attention_sites(model)
    info = model_info(model)
    available = info["kinds"]
    if kinds is not None:
        bad = [k for k in kinds if k not in available]
        if bad:
            raise ValueError(f"kinds {bad} not in this model; it has {available}")
    chosen = [k for k in available if kinds is None or k in kinds]
    sel_layers = {k: select(layers, k, info["layers_per_kind"][k], "layer") for k in chosen}
    sel_heads = {k: select(heads, k, info["heads_per_kind"][k], "head") for k in chosen}
    return sites, sel_layers, sel_heads


def estimate_bytes(model: nn.Module, n_tokens: int, n_decoder_tokens: int | None = None, *,
                   layers: Selection = None, heads: Selection = None,
                   kinds: Sequence[str] | None = None, per_layer: bool = False) -> int:
    """Bytes of float32 maps a capture keeps: ``Σ_kinds layers · heads · Lq · Lk · 4``
    (``Lq = Lk = n_tokens`` for self/encoder, ``n_decoder_tokens`` for decoder queries). With
    ``per_layer`` the largest single layer with all its heads (what the model materialises at
    once, the budget of a ``to_disk`` capture)."""
    lens = lengths(n_tokens, n_decoder_tokens or 1)
    sites, sel_layers, sel_heads = plan(model, layers, heads, kinds)
    if per_layer:
        return max(s.n_heads * lens[s.kind][0] * lens[s.kind][1] * 4 for s in sites)
    return sum(len(sel_layers[k]) * len(sel_heads[k]) * lens[k][0] * lens[k][1] * 4
               for k in sel_layers)


def lengths(n: int, n_dec: int) -> dict[str, tuple[int, int]]:
    """``(Lq, Lk)`` per kind for ``n`` input and ``n_dec`` decoder tokens."""
    return {"self": (n, n), "encoder": (n, n), "decoder": (n_dec, n_dec), "cross": (n_dec, n)}
