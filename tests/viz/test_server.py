"""The explorer's web server: routes, payload shapes, input validation, static-file safety."""

from __future__ import annotations

import asyncio
import urllib.parse

import pytest
import torch

pytest.importorskip("fastapi", reason="the explorer server needs fastapi (dev extra)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (dev extra)")

from fastapi.testclient import TestClient  # noqa: E402

from attnkit.viz.server import create_app  # noqa: E402

TEXT = "The animal didn't cross the street because it was too tired"
MAX_CHARS = 300
LOCAL = "http://127.0.0.1:8765"  # the guard answers loopback Host names only


@pytest.fixture(scope="module")
def client(tiny):
    model, tok = tiny
    with TestClient(create_app(model, tok, max_chars=MAX_CHARS, max_tokens=64),
                    base_url=LOCAL) as c:
        yield c


def test_index_and_static(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for marker in ('id="text"', 'id="show"', 'id="lines"', 'id="heatmap"', 'id="status"'):
        assert marker in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/missing.js").status_code == 404


def test_info(client):
    info = client.get("/api/info").json()
    assert info["family"] == "causal_lm"
    assert (info["n_layers"], info["n_heads"]) == (2, 4)
    assert info["kinds"] == ["self"]
    assert (info["max_chars"], info["max_tokens"]) == (MAX_CHARS, 64)


def test_attention_shapes_and_values(client, tiny):
    model, tok = tiny
    r = client.post("/api/attention", json={"text": TEXT})
    assert r.status_code == 200, r.text
    data = r.json()
    ids = tok.encode(TEXT)
    assert len(data["tokens"]) == len(ids)  # a WordPiece tokenizer has no BOS to add
    assert data["token_ids"] == ids
    assert data["decoder_tokens"] is None and data["text"] == TEXT
    assert data["model"]["family"] == "causal_lm"
    assert list(data["kinds"]) == ["self"]
    k = data["kinds"]["self"]
    assert k["layers"] == [0, 1] and k["heads"] == [0, 1, 2, 3]
    w = torch.tensor(k["weights"], dtype=torch.float64)
    n = len(ids)
    assert w.shape == (2, 4, n, n)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, n, dtype=torch.float64), atol=1e-3,
                               rtol=0)
    assert float(w.triu(1).abs().max()) == 0.0  # causal
    # independently of the capture hooks: the model's own returned weights
    with torch.no_grad():
        ref = torch.stack([a[0] for a in model(torch.tensor([ids]), return_weights=True)
                           .attentions]).double()
    torch.testing.assert_close(w, ref, atol=1e-4, rtol=0)


def test_layer_and_head_selection(client):
    full = client.post("/api/attention", json={"text": TEXT}).json()["kinds"]["self"]
    r = client.post("/api/attention", json={"text": TEXT, "layers": [1], "heads": [2, 0]})
    assert r.status_code == 200, r.text
    k = r.json()["kinds"]["self"]
    assert k["layers"] == [1] and k["heads"] == [0, 2]
    assert k["weights"][0][0] == full["weights"][1][0]
    assert k["weights"][0][1] == full["weights"][1][2]


def test_long_input_is_truncated_and_says_so(client):
    text = "fox " * 70  # 70 tokens, under max_chars
    assert len(text) <= MAX_CHARS
    data = client.post("/api/attention", json={"text": text}).json()
    assert len(data["tokens"]) == 64 and data["truncated"] is True
    assert any("truncated" in w for w in data["warnings"])


@pytest.mark.parametrize("body, status, message", [
    ({"text": ""}, 422, "text is empty"),
    ({"text": "   \n"}, 422, "text is empty"),
    ({"text": "x" * (MAX_CHARS + 1)}, 413, f"the limit is {MAX_CHARS}"),
    ({"text": 42}, 422, "text: Input should be a valid string"),
    ({}, 422, "text: Field required"),
    ({"text": "hi", "layers": [2]}, 422, "valid layers are 0..1"),
    ({"text": "hi", "layers": [-1]}, 422, "valid layers are 0..1"),
    ({"text": "hi", "heads": [4]}, 422, "valid heads are 0..3"),
    ({"text": "hi", "heads": []}, 422, "heads must not be empty"),
    ({"text": "hi", "layers": "0"}, 422, "layers: Input should be a valid list"),
    ({"text": "hi", "layers": [0.5]}, 422, "layers.0: Input should be a valid integer"),
    ({"text": "hi", "layers": [True]}, 422, "layers.0: Input should be a valid integer"),
    ({"text": "hi", "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ({"text": "hi", "decoder_text": "yo"}, 422, "decoder_text is only for seq2seq"),
])
def test_validation_errors(client, body, status, message):
    r = client.post("/api/attention", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_malformed_and_oversized_bodies(client):
    r = client.post("/api/attention", content=b"{not json",
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = client.post("/api/attention", content=b'{"text": "' + b"a" * 100_000 + b'"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert client.get("/api/attention").status_code == 405


def _raw_get(app, raw_path: bytes) -> int:
    """Send ``raw_path`` to the ASGI app untouched (an HTTP client would normalise ``..``);
    ``path`` is percent-decoded, as uvicorn does."""
    path = urllib.parse.unquote(raw_path.decode("latin-1"))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": raw_path,
             "root_path": "", "query_string": b"", "headers": [(b"host", b"localhost:8765")],
             "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}
    sent: list[dict] = []

    async def run() -> None:
        done = asyncio.Event()
        first = True

        async def receive():
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await app(scope, receive, send)

    asyncio.run(run())
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


@pytest.mark.parametrize("raw", [
    b"/static/../server.py", b"/static/../../viz/server.py", b"/static/%2e%2e/server.py",
    b"/static/%2E%2E/%2E%2E/viz/server.py", b"/static/..%2fserver.py",
    b"/static/%2e%2e%2fserver.py", b"/static/..%5cserver.py", b"/static/....//server.py",
    b"/static/%252e%252e/server.py", b"/static//etc/passwd", b"/static/../__init__.py",
])
def test_static_path_traversal_is_blocked(client, raw):
    assert _raw_get(client.app, b"/static/app.js") == 200  # the helper itself works
    assert _raw_get(client.app, raw) == 404


def test_server_binds_localhost_by_default():
    import inspect

    from attnkit.viz import server

    assert inspect.signature(server.serve).parameters["host"].default == "127.0.0.1"


def test_serve_command_registered_on_viz_app(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from attnkit.viz import server
    from attnkit.viz.cli import app

    calls = []
    monkeypatch.setattr(server, "serve", lambda *a, **k: calls.append((a, k)))
    runner = CliRunner()
    r = runner.invoke(app, ["serve", "--checkpoint", str(tmp_path), "--port", "9001",
                            "--max-chars", "50"])
    assert r.exit_code == 0, r.output
    assert calls[-1] == ((str(tmp_path),), {"host": "127.0.0.1", "port": 9001, "max_chars": 50,
                                             "max_tokens": 4096, "memory_budget": 2**30,
                                             "allowed_hosts": []})
    r = runner.invoke(app, ["serve", "-c", str(tmp_path), "--allow-host", "box.lan",
                            "--allow-host", "10.0.0.5", "--memory-budget", "64"])
    assert r.exit_code == 0, r.output
    assert calls[-1][1]["allowed_hosts"] == ["box.lan", "10.0.0.5"]
    assert calls[-1][1]["memory_budget"] == 64 * 2**20
    r = runner.invoke(app, ["--checkpoint", str(tmp_path), "serve"])  # the callback's option
    assert r.exit_code == 0, r.output
    assert calls[-1][0] == (str(tmp_path),)
    r = runner.invoke(app, ["serve"])
    assert r.exit_code == 2 and "--checkpoint" in r.output
    monkeypatch.undo()
    r = runner.invoke(app, ["serve", "--checkpoint", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_seq2seq_kinds_and_decoder_text(wordpiece):
    from attnkit.models import Seq2SeqConfig, Seq2SeqLM

    tok = wordpiece
    torch.manual_seed(0)
    cfg = Seq2SeqConfig.preset("t5-tiny", vocab_size=tok.vocab_size, n_decoder_layers=3,
                               dropout=0.0)
    with TestClient(create_app(Seq2SeqLM(cfg).eval(), tok), base_url=LOCAL) as c:
        info = c.get("/api/info").json()
        assert info["kinds"] == ["encoder", "decoder", "cross"]
        r = c.post("/api/attention", json={"text": "the quick brown fox",
                                           "decoder_text": "the lazy dog", "heads": [1]})
        assert r.status_code == 200, r.text
        data = r.json()
        n_src, n_dec = len(data["tokens"]), len(data["decoder_tokens"])
        assert n_src == len(tok.encode("the quick brown fox")) + 1  # + end token
        assert n_dec == len(tok.encode("the lazy dog")) + 1  # decoder start + text
        shapes = {k: torch.tensor(v["weights"]).shape for k, v in data["kinds"].items()}
        assert shapes == {"encoder": (2, 1, n_src, n_src), "decoder": (3, 1, n_dec, n_dec),
                          "cross": (3, 1, n_dec, n_src)}
        # one layers= list serves every kind: it must exist in the shallower encoder too
        r = c.post("/api/attention", json={"text": "fox", "layers": [2]})
        assert r.status_code == 422 and "valid layers are 0..1" in r.json()["detail"]
