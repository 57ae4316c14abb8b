"""A small local web server for the attention explorer (FastAPI + uvicorn).

Routes (:func:`create_app`):

* ``GET /`` — the explorer page (``web/static/index.html``).
* ``GET /static/...`` — its CSS/JS, served by Starlette's ``StaticFiles`` from that folder only
  (``..`` and encoded variants cannot leave it: 404).
* ``GET /api/info`` — :func:`attnkit.viz.capture.model_info` (``family``, ``architecture``,
  ``n_layers``, ``n_heads``, ``kinds``, ``layers_per_kind``, ``heads_per_kind``) plus
  ``max_chars`` and ``max_tokens``.
* ``POST /api/attention`` — body ``{"text": str, "decoder_text"?: str, "layers"?: [int],
  "heads"?: [int]}``; answers the explorer payload of :mod:`attnkit.viz.web`. Errors are 4xx
  with ``{"detail": "<message>"}``: 422 for an empty text, a wrong type, an unknown field or a
  layer/head outside the model (the message names the valid range), 413 for a text longer than
  ``max_chars`` (or a body far larger than that could need).

:func:`serve` loads a checkpoint with ``attnkit.viz.loading.load_for_viz`` and runs uvicorn,
bound to 127.0.0.1 unless told otherwise: the server runs a model on whatever it is sent, so it
is meant for the local machine.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr
from starlette.datastructures import MutableHeaders

from attnkit.viz.capture import capture, model_info
from attnkit.viz.web import STATIC_DIR, to_payload

__all__ = ["create_app", "serve", "DEFAULT_HOST", "DEFAULT_PORT"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

# The page only ever loads its own files; the SVG is built with DOM calls (no inline styles).
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


class AttentionRequest(BaseModel):
    """Body of ``POST /api/attention``."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr
    decoder_text: StrictStr | None = None
    layers: list[StrictInt] | None = None
    heads: list[StrictInt] | None = None


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
    return list(dict.fromkeys(values))


class _BodyLimit:
    """ASGI middleware: 413 for a declared body larger than ``max_body`` bytes (before it is
    read), and ``X-Content-Type-Options: nosniff`` on every response."""

    def __init__(self, app: Any, max_body: int, max_chars: int):
        self.app, self.max_body, self.max_chars = app, max_body, max_chars

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            response = JSONResponse(
                {"detail": f"request body too large (limit {self.max_body} bytes; texts are "
                           f"limited to {self.max_chars} characters)"}, status_code=413)
            await response(scope, receive, send)
            return

        async def send_nosniff(message: dict) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        await self.app(scope, receive, send_nosniff)


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


def create_app(model: Any, tokenizer: Any, *, max_chars: int = 2000, max_tokens: int = 256
               ) -> FastAPI:
    """The explorer app for one model and tokenizer (see the module docstring). Requests run
    :func:`attnkit.viz.capture.capture` one at a time (the model is shared), in FastAPI's
    thread pool; inputs longer than ``max_tokens`` are truncated (the payload says so)."""
    if max_chars < 1 or max_tokens < 1:
        raise ValueError("max_chars and max_tokens must be >= 1")
    if tokenizer is None:
        raise ValueError("the explorer shows attention over text and needs a tokenizer; this "
                         f"model ({type(model).__name__}) has none")
    info = {**model_info(model), "max_chars": max_chars, "max_tokens": max_tokens}
    # one layers=/heads= list applies to every kind: it must be valid for all of them
    n_layers = min(info["layers_per_kind"].values())
    n_heads = min(info["heads_per_kind"].values())
    # text + decoder_text; a character is at most 12 bytes of JSON (an escaped surrogate pair)
    max_body = 4096 + 24 * max_chars
    lock = threading.Lock()
    model.eval()

    app = FastAPI(title="attnkit attention explorer", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.model, app.state.tokenizer, app.state.info = model, tokenizer, info

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(_Reject)
    async def _rejected(request: Request, exc: _Reject) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    app.add_middleware(_BodyLimit, max_body=max_body, max_chars=max_chars)

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
        for name in ("text", "decoder_text"):
            value = getattr(req, name)
            if value is None:
                continue
            if not value.strip():
                raise _Reject(422, f"{name} is empty")
            if len(value) > max_chars:
                raise _Reject(413, f"{name} is {len(value)} characters long; the limit is "
                                   f"{max_chars}")
        if req.decoder_text is not None and "cross" not in info["kinds"]:
            raise _Reject(422, f"decoder_text is only for seq2seq models; this one is "
                               f"{info['family']!r}")
        layers = _check_indices("layers", req.layers, n_layers)
        heads = _check_indices("heads", req.heads, n_heads)
        try:
            with lock:
                cap = capture(model, tokenizer, req.text, layers=layers, heads=heads,
                              max_tokens=max_tokens, decoder_text=req.decoder_text)
        except ValueError as e:  # e.g. the text has no tokens
            raise _Reject(422, str(e)) from None
        payload = to_payload(cap)
        payload["text"] = req.text
        if req.decoder_text is not None:
            payload["decoder_text"] = req.decoder_text
        return Response(json.dumps(payload, separators=(",", ":"), allow_nan=False),
                        media_type="application/json")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def serve(checkpoint: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
          max_chars: int = 2000, max_tokens: int = 256, log_level: str = "info") -> None:
    """Load ``checkpoint`` (``attnkit.viz.loading.load_for_viz``) and serve the explorer at
    ``http://host:port/`` until interrupted."""
    import uvicorn

    from attnkit.viz.loading import load_for_viz

    model, tokenizer = load_for_viz(checkpoint)
    app = create_app(model, tokenizer, max_chars=max_chars, max_tokens=max_tokens)
    print(f"attnkit explorer: http://{host}:{port}/  (Ctrl+C to stop)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
