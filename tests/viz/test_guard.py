"""The explorer server's gate as plain ASGI: Host names, body limits while streaming, the
cap on bodies in flight over all connections, and what the app behind it receives."""

from __future__ import annotations

import asyncio
import json

import pytest

from attnkit.viz.guard import RequestGuard, is_loopback_name, normalize_host


@pytest.mark.parametrize("raw, host", [
    ("127.0.0.1:8765", "127.0.0.1"), ("[::1]:8765", "::1"), ("::1", "::1"),
    ("LocalHost.:80", "localhost"), ("evil.example", "evil.example"), ("", ""),
    (" Example.COM ", "example.com"), ("[::1", "::1"),
])
def test_normalize_host(raw, host):
    assert normalize_host(raw) == host


@pytest.mark.parametrize("host, loopback", [
    ("localhost", True), ("app.localhost", True), ("127.0.0.1", True), ("127.9.9.9", True),
    ("::1", True), ("localhost.evil.example", False), ("127.0.0.1.nip.io", False),
    ("0.0.0.0", False), ("10.0.0.1", False), ("", False), ("evillocalhost", False),
])
def test_is_loopback_name(host, loopback):
    assert is_loopback_name(host) is loopback


class Echo:
    """An app that answers the body it received (a body starting with ``x`` after ``gate``
    opens, if given)."""

    def __init__(self, gate: asyncio.Event | None = None):
        self.gate, self.bodies = gate, []

    async def __call__(self, scope, receive, send):
        message = await receive()
        self.bodies.append(message["body"])
        if self.gate is not None and message["body"].startswith(b"x"):
            await self.gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})


def call(app, host: str = "127.0.0.1", chunks=(b"",), headers=(), sent=None):
    """One request through ``app``: ``(status, headers, body)``; ``sent`` gets the size of
    each chunk the client handed over."""
    return asyncio.run(asyncio.wait_for(acall(app, host, chunks, headers, sent), 10))


async def acall(app, host="127.0.0.1", chunks=(b"",), headers=(), sent=None):
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [
        *([(b"host", host.encode())] if host is not None else []), *headers]}
    queue = list(chunks)
    out = []

    async def receive():
        if not queue:
            await asyncio.sleep(3600)  # the client has nothing more to say
        chunk = queue.pop(0)
        if sent is not None:
            sent.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

    async def send(message):
        out.append(message)

    await app(scope, receive, send)
    start = next(m for m in out if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def test_foreign_and_missing_hosts_never_reach_the_app():
    app = Echo()
    guard = RequestGuard(app, max_body=100, allowed_hosts=["box.lan", "10.0.0.5"])
    for host in ("evil.example", "evil.example:80", "box.lan.evil", None):
        status, headers, body = call(guard, host)
        assert status == 400 and headers["connection"] == "close"
        assert "accepted: 10.0.0.5, 127.0.0.1, ::1, box.lan, localhost" in json.loads(body)[
            "detail"]
    assert "Host header missing" in json.loads(call(guard, None)[2])["detail"]
    assert app.bodies == []
    for host in ("box.lan:8765", "BOX.LAN", "10.0.0.5", "localhost:1", "[::1]:2"):
        assert call(guard, host)[0] == 200
    assert call(RequestGuard(Echo(), max_body=10, allowed_hosts=["*"]), "any.where")[0] == 200


def test_the_app_gets_the_whole_body_and_nosniff():
    app = Echo()
    status, headers, body = call(RequestGuard(app, max_body=10), chunks=[b"abc", b"de", b"f"])
    assert status == 200 and body == b"abcdef" and app.bodies == [b"abcdef"]
    assert headers["x-content-type-options"] == "nosniff"


def test_a_streamed_body_is_refused_the_moment_it_passes_the_limit():
    app, sent = Echo(), []
    chunks = [b"x" * 40] * 1000  # 40 kB offered, 100 bytes allowed
    status, headers, body = call(RequestGuard(app, max_body=100, body_note="texts: 3 chars"),
                                 chunks=chunks, sent=sent)
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["detail"] == ("request body too large (more than 100 bytes sent; "
                                          "the limit is 100 bytes; texts: 3 chars)")
    assert sum(sent) == 120 and app.bodies == []  # three chunks read, then no more


@pytest.mark.parametrize("length", [b"101", b"-1", b"1e3", b"abc"])
def test_a_declared_length_over_the_limit_is_refused_unread(length):
    sent = []
    status, _, body = call(RequestGuard(Echo(), max_body=100), chunks=[b"x" * 50],
                           headers=[(b"content-length", length)], sent=sent)
    assert status == 413 and sent == []
    assert f"Content-Length {length.decode()!r}" in json.loads(body)["detail"]


def test_bodies_in_flight_are_capped_over_all_connections():
    async def run():
        gate = asyncio.Event()
        app = Echo(gate)
        guard = RequestGuard(app, max_body=100, max_buffered=250)
        first = [asyncio.create_task(acall(guard, chunks=[b"x" * 100])) for _ in range(2)]
        await asyncio.sleep(0.05)  # both held by the app: 200 bytes in flight
        assert guard.buffered == 200
        status, headers, body = await acall(guard, chunks=[b"y" * 60])
        assert status == 503 and headers["retry-after"] == "1"
        assert "server busy" in json.loads(body)["detail"]
        assert (await acall(guard, chunks=[b"z" * 50]))[0] == 200  # 250: still fits
        gate.set()
        assert [(await t)[0] for t in first] == [200, 200]
        assert guard.buffered == 0  # released when answered
        assert (await acall(guard, chunks=[b"y" * 60]))[0] == 200

    asyncio.run(asyncio.wait_for(run(), 10))


def test_lifespan_passes_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(RequestGuard(app, max_body=1)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]
