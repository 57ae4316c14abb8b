"""The attention explorer page, and self-contained HTML snapshots of it.

The page (``static/index.html`` + ``app.js`` + ``style.css``: vanilla JS and SVG, no CDN, no
external fonts) is served by :mod:`attnkit.viz.server` and written into one standalone file by
:func:`export_html`. Both feed it the same JSON, the **explorer payload**::

    {
      "tokens":         ["[CLS]", "the", ...],       # encoder / only sequence, as strings
      "decoder_tokens": ["<pad>", "das", ...] | null, # seq2seq decoder sequence, else null
      "kinds": {                                      # only the kinds the model has:
        "self":    {...},   # decoder-only and encoder-only models (q: tokens, k: tokens)
        "encoder": {...},   # seq2seq encoder self-attention      (q: tokens, k: tokens)
        "decoder": {...},   # seq2seq decoder self-attention      (q: decoder_tokens, k: same)
        "cross":   {...},   # seq2seq cross-attention        (q: decoder_tokens, k: tokens)
      },
      "model": {"family": "causal_lm", "n_layers": 2, "n_heads": 4, ...},
      # optional, passed through from the capture when present:
      "text", "decoder_text", "truncated", "n_tokens_original", "warnings", "predictions",
      "version", "token_ids", "raw_tokens", "decoder_token_ids", "raw_decoder_tokens"
    }

where each kind is ``{"layers": [layer ids], "heads": [head ids], "weights": W}`` and ``W`` is
nested lists ``W[i][j][q][k]`` = the attention probability of query ``q`` on key ``k`` in layer
``layers[i]``, head ``heads[j]`` (rows sum to 1; ``len(W) == len(layers)``, ``len(W[i]) ==
len(heads)``). Floats are rounded to :data:`DECIMALS` places.

A long input served by :mod:`attnkit.viz.server` (past its ``dense_tokens`` / ``dense_cells``)
gets the same payload with ``"windowed": true`` and, per kind, ``{"layers", "heads",
"shape": [Lq, Lk]}`` instead of ``weights``: the page (``static/windowed.js``) then asks the
server for views of one map at a time — a heatmap window reduced to at most 256 × 256 cells
(zoomable down to exact weights) and each query's top-k keys — so neither the page nor the
network ever holds ``Lq · Lk`` numbers. Snapshots (:func:`export_html`) are always the full
payload and leave ``windowed.js`` out.

The source of truth is ``attnkit.viz.capture.capture(...)`` — an
:class:`~attnkit.viz.result.AttentionCapture`, whose ``to_json()`` is this payload plus a few
extra keys (``kinds[k]["shape"]``). :func:`to_payload` accepts the capture object itself (its
tensors are used directly), its ``to_json()`` / ``to_dict()``, or an already-built payload,
checks the shapes and returns the payload above.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["STATIC_DIR", "KINDS", "DECIMALS", "to_payload", "render_html", "export_html",
           "html_for_notebook"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
KINDS = ("self", "encoder", "decoder", "cross")
DECIMALS = 4  # what AttentionCapture.to_json uses; 1e-4 is far below what the eye sees

# the exact lines of static/index.html that export_html replaces
_CSS_TAG = '<link rel="stylesheet" href="static/style.css">'
_JS_TAG = '<script src="static/app.js"></script>'
_SERVER_ONLY_TAG = '<script src="static/windowed.js"></script>\n'  # long inputs: served only
_DATA_MARK = "<!--ATTN-DATA-->"
_PASS_THROUGH = ("version", "text", "decoder_text", "truncated", "n_tokens_original", "warnings",
                 "predictions", "token_ids", "raw_tokens", "decoder_token_ids",
                 "raw_decoder_tokens")


# ---- payload --------------------------------------------------------------------------------


def _tolist(x: Any) -> Any:
    """Tensors / numpy arrays to nested lists (anything with ``tolist``)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu()
    return x.tolist() if hasattr(x, "tolist") else x


def _round(x: Any) -> Any:
    if isinstance(x, list):
        return [_round(v) for v in x]
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"attention weight is not finite: {v}")
    return round(v, DECIMALS)


def _ids(value: Any, n: int) -> list[int]:
    if value is None:
        return list(range(n))
    return [int(v) for v in _tolist(value)]


def _tensor_kind(name: str, entry: Mapping[str, Any], q_len: int, k_len: int
                 ) -> dict[str, Any]:
    """Fast path for a (layers, heads, Lq, Lk) tensor: checks and rounding in torch."""
    import torch

    w = entry["weights"].detach().to("cpu", torch.float64)
    layers = _ids(entry.get("layers"), w.shape[0] if w.dim() else 0)
    heads = _ids(entry.get("heads"), w.shape[1] if w.dim() > 1 else 0)
    want = (len(layers), len(heads), q_len, k_len)
    if tuple(w.shape) != want or not w.numel():
        raise ValueError(f"kind {name!r}: weights must be (layers, heads, query tokens, key "
                         f"tokens) = {want}, got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"kind {name!r}: an attention weight is not finite")
    return {"layers": layers, "heads": heads,
            "weights": torch.round(w, decimals=DECIMALS).tolist()}


def _kind(name: str, entry: Any, q_len: int, k_len: int) -> dict[str, Any]:
    if not isinstance(entry, Mapping):  # a bare weights array: layers/heads are 0..n-1
        entry = {"weights": entry}
    if hasattr(entry["weights"], "detach"):
        return _tensor_kind(name, entry, q_len, k_len)
    weights = _tolist(entry["weights"])
    if not isinstance(weights, list) or not weights:
        raise ValueError(f"kind {name!r}: weights must be a non-empty (layers, heads, q, k) array")
    layers = _ids(entry.get("layers"), len(weights))
    heads = _ids(entry.get("heads"), len(weights[0]))
    if len(weights) != len(layers):
        raise ValueError(f"kind {name!r}: {len(weights)} layers of weights for layers {layers}")
    for li, per_head in enumerate(weights):
        if len(per_head) != len(heads):
            raise ValueError(f"kind {name!r}, layer {layers[li]}: {len(per_head)} heads of "
                             f"weights for heads {heads}")
        for hi, mat in enumerate(per_head):
            if len(mat) != q_len or any(len(row) != k_len for row in mat):
                raise ValueError(
                    f"kind {name!r}, layer {layers[li]}, head {heads[hi]}: weights must be "
                    f"({q_len}, {k_len}) (query tokens, key tokens)")
    return {"layers": layers, "heads": heads, "weights": _round(weights)}


def to_payload(capture_or_json: Any) -> dict[str, Any]:
    """The explorer payload (module docstring) of a capture, its ``to_json()`` (str or dict), or
    a payload; raises ValueError naming what does not fit."""
    obj = capture_or_json
    if isinstance(getattr(obj, "weights", None), Mapping) and hasattr(obj, "to_dict"):
        # an AttentionCapture: metadata from to_dict, weights straight from its tensors
        meta = obj.to_dict(include_weights=False)
        for k, entry in meta.get("kinds", {}).items():
            entry["weights"] = obj.weights[k]
        obj = meta
    elif hasattr(obj, "to_json") and not isinstance(obj, Mapping | str):
        obj = obj.to_json()
    if isinstance(obj, str | bytes):
        obj = json.loads(obj)
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected an AttentionCapture, its to_json() or a payload dict, got "
                        f"{type(capture_or_json).__name__}")
    tokens = [str(t) for t in obj["tokens"]]
    dec = obj.get("decoder_tokens")
    dec = None if dec is None else [str(t) for t in dec]
    kinds_in = obj.get("kinds")
    if kinds_in is None:  # flat layout: {"weights": {kind: ...}, "layers": ..., "heads": ...}
        kinds_in = {k: {"weights": w, "layers": obj.get("layers"), "heads": obj.get("heads")}
                    for k, w in obj["weights"].items()}
    kinds: dict[str, Any] = {}
    for name in sorted(kinds_in, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS)):
        if name not in KINDS:
            raise ValueError(f"unknown attention kind {name!r}; valid: {list(KINDS)}")
        if name in ("decoder", "cross") and dec is None:
            raise ValueError(f"kind {name!r} needs decoder_tokens")
        q = dec if name in ("decoder", "cross") else tokens
        k = dec if name == "decoder" else tokens
        kinds[name] = _kind(name, kinds_in[name], len(q), len(k))
    if not kinds:
        raise ValueError("the capture holds no attention weights")
    model = dict(obj.get("model") or {})
    first = next(iter(kinds.values()))
    model.setdefault("family", "model")
    model.setdefault("n_layers", len(first["layers"]))
    model.setdefault("n_heads", len(first["heads"]))
    out: dict[str, Any] = {"tokens": tokens, "decoder_tokens": dec, "kinds": kinds,
                           "model": model}
    for key in _PASS_THROUGH:
        if obj.get(key) is not None:
            out[key] = obj[key]
    return out


# ---- HTML -----------------------------------------------------------------------------------


def _script_json(payload: Mapping[str, Any]) -> str:
    """JSON safe inside a <script> element: no ``<``, ``>``, ``&`` (so never ``</script>``)."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _inline(kind: str, text: str) -> str:
    if f"</{kind}" in text.lower():
        raise ValueError(f"static file contains '</{kind}' and cannot be inlined")
    return f"<{kind}>\n{text}\n</{kind}>"


def render_html(capture_or_json: Any, *, title: str | None = None) -> str:
    """One self-contained HTML document: the explorer with its CSS, JS and data inlined."""
    payload = to_payload(capture_or_json)
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    css = (STATIC_DIR / "style.css").read_text(encoding="utf-8")
    js = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
    for mark in (_CSS_TAG, _JS_TAG, _DATA_MARK, _SERVER_ONLY_TAG):
        if page.count(mark) != 1:
            raise RuntimeError(f"static/index.html must contain {mark!r} exactly once")
    data = f'<script type="application/json" id="attn-data">{_script_json(payload)}</script>'
    page = (page.replace(_SERVER_ONLY_TAG, "")
            .replace(_CSS_TAG, _inline("style", css))
            .replace(_JS_TAG, _inline("script", js))
            .replace(_DATA_MARK, data))
    if title:
        page = page.replace("<title>attnkit · attention explorer</title>",
                            f"<title>{html.escape(title)}</title>", 1)
    return page


def export_html(capture_or_json: Any, path: str | Path, *, title: str | None = None) -> Path:
    """Write the explorer for one capture as ONE self-contained HTML file (no network, no
    other files: open it with ``file://``); returns the path."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_html(capture_or_json, title=title), encoding="utf-8")
    return p


def html_for_notebook(capture: Any, *, height: int | None = None) -> str:
    """An ``<iframe srcdoc=...>`` holding the self-contained explorer, for
    ``IPython.display.HTML(html_for_notebook(cap))`` (the iframe isolates its ids and script)."""
    payload = to_payload(capture)
    if height is None:
        n = max(len(payload["tokens"]), len(payload["decoder_tokens"] or []))
        height = min(1200, 260 + 22 * n)
    doc = render_html(payload)
    return (f'<iframe srcdoc="{html.escape(doc, quote=True)}" sandbox="allow-scripts" '
            f'style="width:100%;height:{int(height)}px;border:0"></iframe>')
