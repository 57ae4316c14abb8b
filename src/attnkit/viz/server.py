"""A small local web server for the attention explorer (FastAPI + uvicorn).

Routes (:func:`create_app`):

* ``GET /`` — the explorer page (``web/static/index.html``).
* ``GET /static/...`` — its CSS/JS, served by Starlette's ``StaticFiles`` from that folder only
  (``..`` and encoded variants cannot leave it: 404).
* ``GET /api/info`` — :func:`attnkit.viz.capture.model_info` (``family``, ``architecture``,
  ``n_layers``, ``n_heads``, ``kinds``, ``layers_per_kind``, ``heads_per_kind``) plus the
  limits ``max_chars``, ``max_tokens``, ``max_body``, ``dense_tokens``, ``dense_cells``,
  ``max_view_size``, ``max_lines``, ``max_top_k``.
* ``POST /api/attention`` — body ``{"text": str, "decoder_text"?: str, "layers"?: [int],
  "heads"?: [int]}``. A short input (at most ``dense_tokens`` tokens and ``dense_cells``
  weights over the kept maps) answers the full explorer payload of :mod:`attnkit.viz.web`;
  a longer one the same payload *without weights* and with ``"windowed": true`` (each kind:
  ``layers``, ``heads``, ``shape: [Lq, Lk]``): the page then asks for views of it.
* ``POST /api/heatmap`` — ``{"text", "decoder_text"?, "kind"?, "layer": int, "head": int |
  "mean", "heads"?: [int], "q"?: [start, stop], "k"?: [start, stop], "size"?: int,
  "reduce"?: "max" | "mean"}``: the window ``q × k`` of one map reduced to at most ``size ×
  size`` cells (:func:`attnkit.viz.views.window`): ``{"rows", "cols", "cells", "exact", ...}``.
* ``POST /api/lines`` — ``{..., "q": [start, stop], "top_k"?: int}``: the strongest keys of
  each query in ``q`` (:func:`attnkit.viz.views.top_keys`): ``{"keys", "weights", ...}``.

Views of long inputs come from a :class:`~attnkit.viz.map_cache.MapCache` (one layer captured
per request that needs it, kept in float16 under ``memory_budget`` bytes).

Errors are 4xx with ``{"detail": "<message>"}``: 422 for an empty text, a wrong type, an
unknown field, or a kind/layer/head/range outside the model or input (the message names the
valid range), 413 for a text longer than ``max_chars`` or a body larger than that could need,
400 for a body that is not JSON at all or a ``Host`` header that is not this machine's
(:mod:`attnkit.viz.guard`: DNS rebinding), 405 for a wrong method, 404 for anything else;
503 while more than ``max_in_flight`` bytes of request bodies are held.

:func:`serve` loads a checkpoint with ``attnkit.viz.loading.load_for_viz`` and runs uvicorn,
bound to 127.0.0.1 unless told otherwise: the server runs a model on whatever it is sent, so it
is meant for the local machine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from attnkit.viz.capture import capture, input_lengths, model_info
from attnkit.viz.guard import RequestGuard
from attnkit.viz.map_cache import BudgetError, MapCache
from attnkit.viz.sites import lengths
from attnkit.viz.views import check_range, top_keys, window
from attnkit.viz.web import STATIC_DIR, to_payload

__all__ = ["create_app", "serve", "DEFAULT_HOST", "DEFAULT_PORT", "ServerLimits"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

# The page only ever loads its own files; the SVG is built with DOM calls (no inline styles).
SIGNIFICANT = 4  # digits of the weights in heatmap / lines views
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for (the defaults of ``attnkit viz serve``)."""

    max_chars: int = 50_000  # text (and decoder text) length
    max_tokens: int = 4096  # inputs are truncated to this many tokens
    memory_budget: int = 1 << 30  # bytes of captured maps kept for views of long inputs
    # up to this many tokens and weights in all, the page gets every map at once and draws
    # every pair (an SVG element each: 128 tokens already block a page for ~0.3 s)
    dense_tokens: int = 64
    dense_cells: int = 1 << 19
    max_in_flight: int = 64 << 20  # bytes of request bodies held at once, all clients
    max_view_size: int = 512  # heatmap cells per side
    max_lines: int = 256  # queries per lines view
    max_top_k: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{f.name} must be an integer >= 1, got {value!r}")

    @property
    def max_body(self) -> int:
        """Request bytes: text + decoder_text (a character is at most 12 bytes of JSON, an
        escaped surrogate pair) + the rest of a request."""
        return 4096 + 24 * self.max_chars


class _Text(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: StrictStr
    decoder_text: StrictStr | None = None


class AttentionRequest(_Text):
    """Body of ``POST /api/attention``."""

    layers: list[StrictInt] | None = None
    heads: list[StrictInt] | None = None


class _ViewRequest(_Text):
    kind: StrictStr | None = None
    layer: StrictInt
    head: StrictInt | Literal["mean"]
    heads: list[StrictInt] | None = None  # the heads a "mean" averages (default: all)


class HeatmapRequest(_ViewRequest):
    """Body of ``POST /api/heatmap``."""

    q: tuple[StrictInt, StrictInt] | None = None
    k: tuple[StrictInt, StrictInt] | None = None
    size: StrictInt = 256
    reduce: Literal["max", "mean"] = "max"


class LinesRequest(_ViewRequest):
    """Body of ``POST /api/lines``."""

    q: tuple[StrictInt, StrictInt]
    top_k: StrictInt = 8


class _Reject(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _check_indices(name: str, values: list[int] | None, n: int) -> list[int] | None:
    if values is None:
        return None
    if not values:
        raise _Reject(422, f"{name} must not be empty (omit it for all {name})")
    for v in values:
        if not 0 <= v < n:
            raise _Reject(422, f"unknown {name[:-1]} {v}: valid {name} are 0..{n - 1} "
                               f"({n} {name})")
    return sorted(dict.fromkeys(values))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if loc[:1] == ["body"]:
            loc = loc[1:]
        if not loc or loc[0].isdigit():  # the body itself (e.g. not JSON at all)
            loc = ["body", *loc[1:]]
        loc = ".".join(loc)
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _json(obj: Any) -> Response:
    return Response(json.dumps(obj, separators=(",", ":"), allow_nan=False),
                    media_type="application/json")


def _significant(t: Any, digits: int = SIGNIFICANT) -> list:
    """``t`` as nested lists, each value rounded to ``digits`` significant digits: a long
    input's weights are small (~1/L), so a fixed number of decimals would flatten them."""
    import torch

    x = t.double()
    exp = torch.floor(torch.log10(x.abs().clamp_min(1e-300)))
    scale = torch.pow(10.0, digits - 1 - exp)
    return torch.where(x == 0, x, torch.round(x * scale) / scale).tolist()


def create_app(model: Any, tokenizer: Any, *, limits: ServerLimits | None = None,
               allowed_hosts: Iterable[str] = (), **limit_overrides: int) -> FastAPI:
    """The explorer app for one model and tokenizer (see the module docstring). ``limits``
    (or keyword overrides of its fields, e.g. ``max_chars=300``) bound every request;
    ``allowed_hosts``: ``Host`` names accepted besides the loopback ones (``"*"``: any).
    Requests run :func:`attnkit.viz.capture.capture` one at a time (the model is shared), in
    FastAPI's thread pool; inputs longer than ``max_tokens`` are truncated (the payload says
    so)."""
    lim = replace(limits or ServerLimits(), **limit_overrides)
    if tokenizer is None:
        raise ValueError("the explorer shows attention over text and needs a tokenizer; this "
                         f"model ({type(model).__name__}) has none")
    info = {**model_info(model), **asdict(lim), "max_body": lim.max_body}
    for private in ("memory_budget", "max_in_flight"):
        del info[private]
    # one layers=/heads= list applies to every kind: it must be valid for all of them
    n_layers = min(info["layers_per_kind"].values())
    n_heads = min(info["heads_per_kind"].values())
    maps = MapCache(model, tokenizer, max_tokens=lim.max_tokens, budget=lim.memory_budget)
    model.eval()

    app = FastAPI(title="attnkit attention explorer", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.model, app.state.tokenizer, app.state.info = model, tokenizer, info
    app.state.limits, app.state.maps = lim, maps

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(_Reject)
    async def _rejected(request: Request, exc: _Reject) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        cause = exc.__cause__  # FastAPI's body parser: RecursionError, UnicodeDecodeError, ...
        if exc.status_code == 400 and cause is not None:
            reason = str(cause).split(";")[0]
            return JSONResponse({"detail": f"body: not valid JSON ({reason})"},
                                status_code=400)
        return await http_exception_handler(request, exc)

    app.add_middleware(RequestGuard, max_body=lim.max_body, max_buffered=lim.max_in_flight,
                       allowed_hosts=allowed_hosts,
                       body_note=f"texts are limited to {lim.max_chars} characters")

    def check_text(req: _Text) -> None:
        for name in ("text", "decoder_text"):
            value = getattr(req, name)
            if value is None:
                continue
            if not value.strip():
                raise _Reject(422, f"{name} is empty")
            if len(value) > lim.max_chars:
                raise _Reject(413, f"{name} is {len(value)} characters long; the limit is "
                                   f"{lim.max_chars}")
            try:  # JSON allows "\ud800"; no tokenizer can encode it
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise _Reject(422, f"{name} is not valid Unicode: a lone surrogate "
                                   f"{value[e.start]!r} at character {e.start}") from None
        if req.decoder_text is not None and "cross" not in info["kinds"]:
            raise _Reject(422, f"decoder_text is only for seq2seq models; this one is "
                               f"{info['family']!r}")

    def input_shape(req: _Text) -> tuple[int, int | None]:
        try:
            return input_lengths(model, tokenizer, req.text, decoder_text=req.decoder_text,
                                 max_tokens=lim.max_tokens)
        except ValueError as e:  # e.g. the text has no tokens
            raise _Reject(422, str(e)) from None

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": _CSP,
                                     "Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/api/info")
    def api_info() -> dict[str, Any]:
        return info

    @app.post("/api/attention")
    def api_attention(req: AttentionRequest) -> Response:
        check_text(req)
        layers = _check_indices("layers", req.layers, n_layers)
        heads = _check_indices("heads", req.heads, n_heads)
        n, n_dec = input_shape(req)
        shapes = lengths(n, n_dec or 1)
        cells = sum(len(layers or range(info["layers_per_kind"][k]))
                    * len(heads or range(info["heads_per_kind"][k]))
                    * shapes[k][0] * shapes[k][1] for k in info["kinds"])
        if max(n, n_dec or 0) <= lim.dense_tokens and cells <= lim.dense_cells:
            try:  # captures of one model take turns (capture's own lock)
                cap = capture(model, tokenizer, req.text, layers=layers, heads=heads,
                              max_tokens=lim.max_tokens, decoder_text=req.decoder_text)
            except ValueError as e:
                raise _Reject(422, str(e)) from None
            payload = to_payload(cap)
        else:
            payload = windowed_payload(req, layers, heads, shapes)
        payload["text"] = req.text
        if req.decoder_text is not None:
            payload["decoder_text"] = req.decoder_text
        return _json(payload)

    def windowed_payload(req: AttentionRequest, layers: list[int] | None,
                         heads: list[int] | None, shapes: dict) -> dict[str, Any]:
        """The explorer payload without weights; the first layer's maps are captured now,
        so the page's first views are served from the cache."""
        kind = info["kinds"][0]
        first = maps_for(req, kind, (layers or [0])[0])
        meta = first.meta.to_dict(include_weights=False)
        meta["kinds"] = {k: {"layers": layers or list(range(info["layers_per_kind"][k])),
                             "heads": heads or list(range(info["heads_per_kind"][k])),
                             "shape": list(shapes[k])} for k in info["kinds"]}
        meta["windowed"] = True
        return {k: v for k, v in meta.items() if v is not None or k == "decoder_tokens"}

    def maps_for(req: _Text, kind: str, layer: int) -> Any:
        try:
            return maps.get(req.text, req.decoder_text, kind, layer,
                            info["heads_per_kind"][kind])
        except BudgetError as e:
            raise _Reject(413, str(e)) from None
        except ValueError as e:
            raise _Reject(422, str(e)) from None

    def view_maps(req: _ViewRequest) -> tuple[str, Any, Any]:
        """Validate a view request; ``(kind, LayerMaps, the map or heads to show)``."""
        check_text(req)
        kind = info["kinds"][0] if req.kind is None else req.kind
        if kind not in info["kinds"]:
            raise _Reject(422, f"unknown kind {kind!r}: this model has {info['kinds']}")
        nl, nh = info["layers_per_kind"][kind], info["heads_per_kind"][kind]
        _check_indices("layers", [req.layer], nl)
        if req.head != "mean":
            _check_indices("heads", [req.head], nh)
        subset = _check_indices("heads", req.heads, nh)
        lm = maps_for(req, kind, req.layer)
        return kind, lm, lm.map(req.head, subset)

    def view_header(req: _ViewRequest, kind: str, lm: Any) -> dict[str, Any]:
        return {"kind": kind, "layer": req.layer, "head": req.head,
                "shape": list(lm.mean.shape), "truncated": lm.meta.truncated}

    @app.post("/api/heatmap")
    def api_heatmap(req: HeatmapRequest) -> Response:
        if not 1 <= req.size <= lim.max_view_size:
            raise _Reject(422, f"size {req.size} is outside 1..{lim.max_view_size}")
        kind, lm, attn = view_maps(req)
        try:
            w = window(attn, req.q, req.k, size=req.size, reduce=req.reduce)
        except ValueError as e:
            raise _Reject(422, str(e)) from None
        return _json({**view_header(req, kind, lm), "reduce": w.reduce,
                      "q": [w.rows[0], w.rows[-1]], "k": [w.cols[0], w.cols[-1]],
                      "rows": w.rows, "cols": w.cols, "exact": w.exact,
                      "cells": _significant(w.cells)})

    @app.post("/api/lines")
    def api_lines(req: LinesRequest) -> Response:
        if not 1 <= req.top_k <= lim.max_top_k:
            raise _Reject(422, f"top_k {req.top_k} is outside 1..{lim.max_top_k}")
        start, stop = req.q
        if not 0 < stop - start <= lim.max_lines:
            raise _Reject(422, f"q [{start}, {stop}) must hold 1..{lim.max_lines} queries")
        kind, lm, attn = view_maps(req)
        try:
            check_range("query", req.q, attn.shape[-2])
            top = top_keys(attn, req.q, req.top_k)
        except ValueError as e:
            raise _Reject(422, str(e)) from None
        return _json({**view_header(req, kind, lm), "q": [start, stop], "top_k": req.top_k,
                      "keys": top.keys,
                      "weights": [[float(f"{x:.{SIGNIFICANT}g}") for x in row]
                                  for row in top.weights]})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def serve(checkpoint: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
          limits: ServerLimits | None = None, allowed_hosts: Iterable[str] = (),
          log_level: str = "info", **limit_overrides: int) -> None:
    """Load ``checkpoint`` (``attnkit.viz.loading.load_for_viz``) and serve the explorer at
    ``http://host:port/`` until interrupted. Requests must name this machine in their
    ``Host`` header: a loopback name, ``host`` itself, or one of ``allowed_hosts``."""
    import uvicorn

    from attnkit.viz.loading import load_for_viz

    model, tokenizer = load_for_viz(checkpoint)
    app = create_app(model, tokenizer, limits=limits, allowed_hosts=[host, *allowed_hosts],
                     **limit_overrides)
    print(f"attnkit explorer: http://{host}:{port}/  (Ctrl+C to stop)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
