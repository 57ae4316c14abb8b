"""The explorer server's gate: who may ask (the ``Host`` header) and how much they may send.

:class:`RequestGuard` is ASGI middleware in front of the whole app:

* **Host names.** A page on ``evil.example`` can make its visitor's browser talk to
  ``127.0.0.1`` by re-pointing its own DNS name there (DNS rebinding); the browser then sends
  ``Host: evil.example``. Only requests whose ``Host`` is a loopback name (``localhost``,
  ``*.localhost``, ``127.0.0.0/8``, ``::1``) or one of the configured names (the address the
  server binds, ``--allow-host``) are answered; others get ``400`` naming the host and the
  names accepted. ``"*"`` among the names turns the check off.
* **Body size.** At most ``max_body`` bytes: a larger declared ``Content-Length`` is refused
  before anything is read, and a body without one (``Transfer-Encoding: chunked``) is read as
  it arrives and refused the moment it passes the limit, so the server never holds more than
  ``max_body`` bytes of a request (plus uvicorn's 64 KiB read buffer). Refusals (``413``)
  carry ``Connection: close``: the server stops reading the connection instead of draining
  the rest of the upload.
* **Bodies in flight.** At most ``max_buffered`` bytes of request bodies are held at once,
  over all connections; a request that would pass it gets ``503`` (``Retry-After: 1``), so
  many concurrent uploads cannot add up to more than that either.
* Every response gets ``X-Content-Type-Options: nosniff``.

Refusals are JSON ``{"detail": "<message>"}``, like the app's own errors.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

__all__ = ["RequestGuard", "normalize_host", "is_loopback_name"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def normalize_host(value: str) -> str:
    """``Host`` header value → bare lower-case name: port, IPv6 brackets and a trailing dot
    removed (``"[::1]:8765"`` → ``"::1"``, ``"LocalHost.:80"`` → ``"localhost"``)."""
    host = value.strip().lower()
    if host.startswith("["):  # [v6]:port
        host = host[1:host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:  # name:port (a bare v6 address has several colons)
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def is_loopback_name(host: str) -> bool:
    """``localhost``, ``*.localhost`` (RFC 6761: always loopback, browsers never ask DNS) or a
    loopback IP address."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    extra = [(b"retry-after", b"1")] if status == 503 else []
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                            (b"x-content-type-options", b"nosniff"), *extra]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class RequestGuard:
    """ASGI middleware: Host allow-list, streamed body limit, ``nosniff`` (module docstring).

    ``allowed_hosts``: names accepted besides the loopback ones; ``body_note`` is appended to
    the 413 message (e.g. the text limit in characters)."""

    def __init__(self, app: Any, *, max_body: int, max_buffered: int | None = None,
                 allowed_hosts: Iterable[str] = (), body_note: str = ""):
        if max_body < 1:
            raise ValueError(f"max_body must be >= 1, got {max_body}")
        self.app, self.max_body, self.body_note = app, max_body, body_note
        self.max_buffered = max(max_body, max_buffered or 64 * max_body)
        self.buffered = 0  # bytes of bodies held right now (the event loop is one thread)
        names = {normalize_host(h) for h in allowed_hosts if h.strip()}
        self.any_host = "*" in names
        self.allowed = names - {"*"}

    def host_allowed(self, host: str) -> bool:
        return self.any_host or is_loopback_name(host) or host in self.allowed

    def _too_large(self, size: str) -> str:
        note = f"; {self.body_note}" if self.body_note else ""
        return f"request body too large ({size}; the limit is {self.max_body} bytes{note})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        raw_host = headers.get(b"host", b"").decode("latin-1")
        host = normalize_host(raw_host)
        if not self.host_allowed(host):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            names = ", ".join(sorted({"localhost", "127.0.0.1", "::1", *self.allowed}))
            what = (f"Host header {raw_host!r} is not served here" if raw_host else
                    "Host header missing: a request must name the server")
            await _refuse(send, 400, f"{what} (accepted: {names}; start the server with "
                                     "--allow-host NAME to add one)")
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return

        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _refuse(send, 413, self._too_large(f"Content-Length {length.decode()!r}"))
            return
        # read the body here, never past the limits, then replay it to the app; its bytes
        # count as in flight until the app has answered
        chunks: list[bytes] = []
        held = 0
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":  # the client went away
                    return
                chunk = message.get("body", b"")
                if held + len(chunk) > self.max_body:
                    await _refuse(send, 413, self._too_large(f"more than {self.max_body} "
                                                             "bytes sent"))
                    return
                if self.buffered + len(chunk) > self.max_buffered:
                    await _refuse(send, 503, f"server busy: {self.max_buffered} bytes of "
                                             "request bodies are in flight; retry shortly")
                    return
                self.buffered += len(chunk)
                held += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            chunks.clear()
            await self.app(scope, _replay(body, receive), _nosniff(send))
        finally:
            self.buffered -= held


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands over ``body`` once, then waits on the real one (disconnect)."""
    pending = [body]

    async def replay() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replay


def _nosniff(send: Send) -> Send:
    """A ``send`` that adds ``X-Content-Type-Options: nosniff`` to the response headers."""

    async def send_nosniff(message: Message) -> None:
        if message["type"] == "http.response.start":
            hs = list(message.get("headers", ()))
            if not any(k.lower() == b"x-content-type-options" for k, _ in hs):
                hs.append((b"x-content-type-options", b"nosniff"))
            message = {**message, "headers": hs}
        await send(message)

    return send_nosniff
