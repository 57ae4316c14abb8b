"""The explorer server under hostile use, through the real thing: ``attnkit viz serve`` in its
own process on 127.0.0.1, spoken to over raw sockets (no client-side normalisation).

Oversized and endless uploads, foreign ``Host`` headers (DNS rebinding), path traversal,
malformed JSON, unknown kinds/layers/heads/ranges and 200 concurrent requests: every refusal
is a 4xx with a message, nothing outside the static folder is served, the server's memory
stays bounded and it is still up afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the explorer server needs fastapi (dev extra)")
pytest.importorskip("uvicorn", reason="the explorer server needs uvicorn (dev extra)")

pytestmark = pytest.mark.slow

MAX_CHARS = 300
MAX_BODY = 4096 + 24 * MAX_CHARS  # ServerLimits.max_body
MIB = 2**20
SOURCE_MARKERS = (b"def create_app", b"import ", b"root:x:0:0", b"__all__")


@dataclass
class Live:
    proc: subprocess.Popen
    port: int
    log: Path

    def peak_rss(self) -> int:
        """The server process's peak resident memory so far (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/<pid>/status")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(tiny_dir, tmp_path_factory):
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux /proc to read the server's memory")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for _attempt in range(3):  # the free port may be taken before the server binds it
        port = _free_port()
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "attnkit.cli", "viz", "serve", "-c", str(tiny_dir),
                 "--port", str(port), "--max-chars", str(MAX_CHARS), "--max-tokens", "64"],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if request(port, "GET", "/api/info")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        if proc.poll() is None:
            break
    else:
        pytest.fail(f"attnkit viz serve did not start:\n{log.read_text()}")
    server = Live(proc, port, log)
    yield server
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def _send_raw(port: int, data: bytes, timeout: float = 30) -> tuple[int, dict, bytes]:
    """Send ``data`` as it is; read the response to the end (the request says
    ``Connection: close``). ``(status, headers, body)``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return _parse(b"".join(chunks))


def _parse(raw: bytes) -> tuple[int, dict, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in lines[1:] if ":" in line)}
    return status, headers, body


def request(port: int, method: str, target: str, body: bytes | dict | None = None, *,
            host: str | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 request with ``Connection: close``; ``target`` is sent byte for byte."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    hs = {"Host": f"127.0.0.1:{port}" if host is None else host, "Connection": "close",
          **({"Content-Type": "application/json", "Content-Length": str(len(body))}
             if body is not None else {}), **(headers or {})}
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs.items()
                                                        if v is not None)
    return _send_raw(port, head.encode("latin-1") + b"\r\n" + (body or b""))


def detail(body: bytes) -> str:
    return json.loads(body)["detail"]


# ---- body size --------------------------------------------------------------------------


def test_chunked_200_mb_upload_is_refused_early_with_bounded_memory(live):
    assert request(live.port, "POST", "/api/attention", {"text": "warm up"})[0] == 200
    rss_before = live.peak_rss()
    total = 200 * MIB
    chunk = b'{"text": "' + b"a" * (64 * 1024 - 10)
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    s = socket.create_connection(("127.0.0.1", live.port), timeout=30)
    s.sendall(f"POST /api/attention HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\n"
              "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    response = bytearray()
    answered = threading.Event()

    def read() -> None:
        try:
            while data := s.recv(65536):
                response.extend(data)
        except OSError:
            pass
        answered.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent = 0
    t0 = time.monotonic()
    try:
        while sent < total and not answered.is_set():
            s.sendall(frame)
            sent += len(chunk)
    except OSError:  # the server closed the connection on us: what it should do
        pass
    answered.wait(30)
    s.close()
    elapsed = time.monotonic() - t0
    grew = live.peak_rss() - rss_before
    print(f"chunked upload: {sent / MIB:.1f} MiB sent before the refusal, in {elapsed:.2f} s; "
          f"server peak memory +{grew / MIB:.1f} MiB")
    status, headers, body = _parse(bytes(response))
    assert status == 413, bytes(response[:300])
    assert headers["connection"] == "close"
    assert "too large" in detail(body) and str(MAX_BODY) in detail(body)
    # what the server let in is its limit plus the kernel's socket buffers, not 200 MB
    assert sent < 32 * MIB, f"{sent / MIB:.0f} MiB sent before the refusal"
    assert grew < 32 * MIB
    assert elapsed < 20
    assert request(live.port, "GET", "/api/info")[0] == 200


def test_declared_oversized_body_is_refused_before_it_is_sent(live):
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as s:
        s.sendall(f"POST /api/attention HTTP/1.1\r\nHost: localhost:{live.port}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {200 * MIB}\r\n\r\n"
                  .encode())
        raw = b""
        while chunk := s.recv(65536):  # no body byte sent: the answer comes anyway
            raw += chunk
    status, headers, body = _parse(raw)
    assert status == 413 and headers["connection"] == "close"
    assert f"Content-Length '{200 * MIB}'" in detail(body)


@pytest.mark.parametrize("length", ["-1", "12abc", "1e9"])
def test_malformed_content_length_is_a_4xx(live, length):
    status, _, _ = request(live.port, "POST", "/api/attention", None,
                           headers={"Content-Length": length})
    assert 400 <= status < 500


# ---- Host header (DNS rebinding) --------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "localhost.evil.example",
                                  "127.0.0.1.nip.io", "0x7f000001.evil", "example.com:80", ""])
def test_foreign_host_header_is_refused(live, host):
    for method, path, body in (("GET", "/", None), ("GET", "/api/info", None),
                               ("POST", "/api/attention", {"text": "hi"})):
        status, _, resp = request(live.port, method, path, body,
                                  host=host.format(port=live.port))
        assert status == 400, (host, path, resp[:200])
        msg = detail(resp)
        assert "Host header" in msg and "--allow-host" in msg and "localhost" in msg


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST",
                                  "[::1]:{port}", "127.0.0.2", "app.localhost:{port}",
                                  "localhost."])
def test_loopback_host_names_are_served(live, host):
    status, _, resp = request(live.port, "GET", "/api/info", host=host.format(port=live.port))
    assert status == 200, resp[:200]


def test_http_1_0_without_host_is_refused(live):
    status, _, body = _send_raw(live.port, b"GET /api/info HTTP/1.0\r\n\r\n")
    assert status == 400 and "Host header missing" in detail(body)


# ---- static files -----------------------------------------------------------------------


@pytest.mark.parametrize("target", [
    "/static/../server.py", "/static/../../viz/server.py", "/static/%2e%2e/server.py",
    "/static/%2E%2E/%2E%2E/capture.py", "/static/..%2fserver.py", "/static/%2e%2e%2fserver.py",
    "/static/..%5cserver.py", "/static/..\\server.py", "/static/....//server.py",
    "/static/%252e%252e/server.py", "/static//etc/passwd", "/static/%2fetc%2fpasswd",
    "/static/../../../../../../etc/passwd", "/..%2f..%2f..%2fetc%2fpasswd", "//etc/passwd",
    "/static/./../__init__.py", "/static/..;/server.py", "/static/app.js%00.py",
    "/static/%c0%ae%c0%ae/server.py", "/static/web/../../server.py",
    "http://127.0.0.1/static/../server.py",
])
def test_nothing_is_served_outside_the_static_folder(live, target):
    status, _, body = request(live.port, "GET", target)
    assert 400 <= status < 500, (target, status, body[:200])
    assert not any(m in body for m in SOURCE_MARKERS), (target, body[:200])


def test_static_files_are_served(live):
    status, headers, body = request(live.port, "GET", "/static/app.js")
    assert status == 200 and b"attnkit" in body
    assert headers["x-content-type-options"] == "nosniff"


# ---- request bodies and parameters ------------------------------------------------------


@pytest.mark.parametrize("path, body, status, message", [
    ("/api/attention", b"{not json", 422, "JSON decode error"),
    ("/api/attention", b"[" * 5000, 400, "not valid JSON"),  # nested past the parser's depth
    ("/api/attention", b'{"text": "\xff\xfe"}', 400, "not valid JSON"),  # not UTF-8
    ("/api/attention", b'{"text": "a", "layers": [' + b"9" * 5000 + b"]}", 400,
     "not valid JSON"),  # an integer of 5000 digits
    ("/api/attention", b'{"text": "\\ud800 x"}', 422, "lone surrogate"),
    ("/api/attention", b'{"text": NaN}', 422, "text: Input should be a valid string"),
    ("/api/attention", b"null", 422, "body: Input should be a valid dictionary"),
    ("/api/attention", b"", 422, "body: Field required"),
    ("/api/attention", b'{"text": "\\u0000\\u0007"}', 422, "no tokens"),
    ("/api/attention", b'{"text": "hi", "layers": [99]}', 422, "valid layers are 0..1"),
    ("/api/attention", b'{"text": "hi", "heads": [-1]}', 422, "valid heads are 0..3"),
    ("/api/attention", b'{"text": "hi", "decoder_text": "x"}', 422, "only for seq2seq"),
    ("/api/attention", b'{"text": "hi", "evil": 1}', 422, "evil: Extra inputs"),
    ("/api/attention", json.dumps({"text": "x" * (MAX_CHARS + 1)}).encode(), 413,
     f"the limit is {MAX_CHARS}"),
    ("/api/heatmap", b'{"text": "hi", "layer": 5, "head": 0}', 422, "valid layers are 0..1"),
    ("/api/heatmap", b'{"text": "hi", "layer": 0, "head": 4}', 422, "valid heads are 0..3"),
    ("/api/heatmap", b'{"text": "hi", "layer": 0, "head": "max"}', 422, "head"),
    ("/api/heatmap", b'{"text": "hi", "kind": "cross", "layer": 0, "head": 0}', 422,
     "unknown kind 'cross'"),
    ("/api/heatmap", b'{"text": "hi", "layer": 0, "head": 0, "q": [0, 999]}', 422,
     "query range [0, 999)"),
    ("/api/heatmap", b'{"text": "hi", "layer": 0, "head": 0, "k": [1, 1]}', 422,
     "key range [1, 1)"),
    ("/api/heatmap", b'{"text": "hi", "layer": 0, "head": 0, "size": 100000}', 422,
     "size 100000 is outside 1..512"),
    ("/api/heatmap", b'{"text": "hi", "layer": 0, "head": 0, "reduce": "sum"}', 422,
     "reduce"),
    ("/api/lines", b'{"text": "hi", "layer": 0, "head": 0, "q": [0, 1], "top_k": 0}', 422,
     "top_k 0 is outside 1..64"),
    ("/api/lines", b'{"text": "hi", "layer": 0, "head": 0, "q": [0, 100000]}', 422,
     "must hold 1..256 queries"),
    ("/api/lines", b'{"text": "hi", "layer": 0, "head": 0, "q": [5, 6]}', 422,
     "query range [5, 6)"),
])
def test_bad_requests_are_4xx_with_a_message(live, path, body, status, message):
    got, headers, resp = request(live.port, "POST", path, body)
    assert got == status, resp[:300]
    assert headers["content-type"] == "application/json"
    assert message in detail(resp)


def test_wrong_methods_and_unknown_paths(live):
    assert request(live.port, "GET", "/api/attention")[0] == 405
    assert request(live.port, "DELETE", "/")[0] == 405
    assert request(live.port, "GET", "/api/nope")[0] == 404
    assert request(live.port, "GET", "/static/")[0] == 404  # no directory listing


# ---- load -------------------------------------------------------------------------------


def test_200_concurrent_requests_then_still_up(live, wordpiece):
    texts = [f"the quick brown fox jumps {'over the lazy dog ' * (i % 5)}" for i in range(200)]
    cases = []
    for i, text in enumerate(texts):
        match i % 5:
            case 0 | 1:
                cases.append(("POST", "/api/attention", {"text": text}, 200))
            case 2:
                cases.append(("POST", "/api/heatmap", {"text": text, "layer": 1,
                                                       "head": "mean", "size": 4}, 200))
            case 3:
                cases.append(("POST", "/api/attention", {"text": text, "layers": [7]}, 422))
            case 4:
                cases.append(("GET", "/static/%2e%2e/server.py", None, 404))
    start = threading.Barrier(len(cases), timeout=60)

    def one(case):
        method, path, body, _ = case
        start.wait()  # every connection is open before the first request is sent
        return request(live.port, method, path, body)

    rss_before = live.peak_rss()
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        results = list(pool.map(one, cases))
    for (_, path, body, want), (status, _, resp), text in zip(cases, results, texts,
                                                                   strict=True):
        assert status == want, (path, body, resp[:200])
        if status != 200:
            assert detail(resp)
        elif path == "/api/attention":  # each answer is for its own request
            data = json.loads(resp)
            assert data["text"] == text
            n = len(wordpiece.encode(text))
            assert len(data["tokens"]) == n
            assert len(data["kinds"]["self"]["weights"][0][0]) == n
        else:
            data = json.loads(resp)
            assert data["rows"][-1] == len(wordpiece.encode(text))
    assert live.peak_rss() - rss_before < 256 * MIB
    assert live.proc.poll() is None
    assert request(live.port, "GET", "/api/info")[0] == 200
    assert request(live.port, "POST", "/api/attention", {"text": "still here"})[0] == 200
