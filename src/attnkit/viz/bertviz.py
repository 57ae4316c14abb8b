"""An :class:`~attnkit.viz.result.AttentionCapture` in the form bertviz draws (Vig 2019).

::

    from bertviz import head_view, model_view

    cap = capture(model, tok, "The cat sat on the mat.")
    head_view(**cap.to_bertviz())                          # in a notebook
    html = model_view(**cap.to_bertviz(), html_action="return").data

bertviz takes, per kind of attention, a tuple with one ``(1, H, Lq, Lk)`` tensor per model
layer, plus the token strings (:func:`to_bertviz` returns exactly these keyword arguments):

* one stack (``self``: GPT, LLaMA, BERT, ViT): ``attention`` and ``tokens``;
* an encoder–decoder: ``encoder_attention`` / ``decoder_attention`` / ``cross_attention``
  (the kinds captured), ``encoder_tokens`` and ``decoder_tokens``.

bertviz addresses layers and heads by model index, with one ``include_layers`` list for every
kind. So each kind's tuple has as many layers as the deepest stack (a layer a capture did not
keep, or a stack does not have, is a zero map that is never materialised), and
``include_layers`` lists the layers kept by any kind; a head that was not kept is a zero map
(``model_view(..., include_heads=cap.heads[kind])`` hides it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from attnkit.viz.result import AttentionCapture

__all__ = ["to_bertviz"]

_NAMES = {"self": "attention", "encoder": "encoder_attention", "decoder": "decoder_attention",
          "cross": "cross_attention"}


def _count(cap: AttentionCapture, what: str, kind: str) -> int:
    """Layers or heads of ``kind`` in the model (from the capture's model summary, else the
    highest kept index + 1)."""
    per_kind = cap.model.get(f"{what}_per_kind") or {}
    kept = cap.layers[kind] if what == "layers" else cap.heads[kind]
    return int(per_kind.get(kind, max(kept) + 1))


def _layer_maps(cap: AttentionCapture, kind: str, n_layers: int) -> tuple[Tensor, ...]:
    """``n_layers`` tensors ``(1, H, Lq, Lk)``: the kept maps at their model layer and head,
    zeros elsewhere."""
    w = cap.weights[kind]  # (kept layers, kept heads, Lq, Lk)
    n_heads = _count(cap, "heads", kind)
    Lq, Lk = w.shape[-2:]
    zeros = torch.zeros((), dtype=torch.float32).expand(1, n_heads, Lq, Lk)
    out: list[Tensor] = [zeros] * n_layers
    all_heads = list(cap.heads[kind]) == list(range(n_heads))
    for slot, layer in enumerate(cap.layers[kind]):
        maps = torch.as_tensor(w[slot], dtype=torch.float32)  # (kept heads, Lq, Lk)
        if all_heads:
            out[layer] = maps[None]
        else:
            full = torch.zeros(1, n_heads, Lq, Lk)
            full[0, cap.heads[kind]] = maps
            out[layer] = full
    return tuple(out)


def to_bertviz(cap: AttentionCapture) -> dict[str, Any]:
    """Keyword arguments for ``bertviz.head_view`` / ``model_view`` (module docstring)."""
    kinds = cap.kinds
    if not kinds:
        raise ValueError("the capture holds no attention maps")
    depth = max(_count(cap, "layers", k) for k in kinds)
    kept = sorted({layer for k in kinds for layer in cap.layers[k]})
    args: dict[str, Any] = {_NAMES[k]: _layer_maps(cap, k, depth) for k in kinds}
    if "self" in kinds:
        if len(kinds) > 1:
            raise ValueError(f"a capture mixes self-attention with {kinds[1:]}: bertviz draws "
                             "one stack or an encoder–decoder")
        args["tokens"] = list(cap.tokens)
    else:
        args["encoder_tokens"] = list(cap.tokens)
        if cap.decoder_tokens is not None:
            args["decoder_tokens"] = list(cap.decoder_tokens)
        elif "decoder" in kinds or "cross" in kinds:
            raise ValueError("decoder or cross attention captured without decoder tokens")
    args["include_layers"] = kept
    return args
