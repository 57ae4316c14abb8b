"""The explorer server on long inputs: a payload without weights, then heatmap windows and
top-k lines computed server-side — checked against the model's own attention weights and
loop references, never against the server's own code."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi", reason="the explorer server needs fastapi (dev extra)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (dev extra)")

from fastapi.testclient import TestClient  # noqa: E402
from test_views import reference_top, reference_window  # noqa: E402

from attnkit.models import CausalLM, CausalLMConfig  # noqa: E402
from attnkit.viz.server import create_app  # noqa: E402

LOCAL = "http://127.0.0.1:8765"
TEXT = "the quick brown fox jumps over the lazy dog and attention looks back " * 20


@pytest.fixture(scope="module")
def lm(wordpiece):
    torch.manual_seed(0)
    return CausalLM(CausalLMConfig(vocab_size=wordpiece.vocab_size, max_seq_len=512,
                                   d_model=32, n_layers=2, n_heads=2, d_ff=64)).eval()


@pytest.fixture(scope="module")
def client(lm, wordpiece):
    with TestClient(create_app(lm, wordpiece, max_tokens=512), base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def weights(lm, wordpiece):
    """The model's own maps for TEXT: (layers, heads, L, L) float64."""
    ids = wordpiece.encode(TEXT)
    with torch.no_grad():
        out = lm(torch.tensor([ids]), return_weights=True)
    return torch.stack([a[0] for a in out.attentions]).double()


def test_long_input_gets_a_payload_without_weights(client, wordpiece, weights):
    n = weights.shape[-1]
    assert n == len(wordpiece.encode(TEXT)) > 256  # past the dense limit
    data = client.post("/api/attention", json={"text": TEXT}).json()
    assert data["windowed"] is True and data["text"] == TEXT
    assert len(data["tokens"]) == n and data["token_ids"] == wordpiece.encode(TEXT)
    assert data["kinds"] == {"self": {"layers": [0, 1], "heads": [0, 1], "shape": [n, n]}}
    assert "weights" not in str(data["kinds"]) and data["decoder_tokens"] is None
    picked = client.post("/api/attention", json={"text": TEXT, "layers": [1], "heads": [1]})
    assert picked.json()["kinds"]["self"] == {"layers": [1], "heads": [1], "shape": [n, n]}
    short = client.post("/api/attention", json={"text": "the quick brown fox"}).json()
    assert "windowed" not in short and "weights" in short["kinds"]["self"]


@pytest.mark.parametrize("layer, head", [(0, 0), (1, 1), (1, "mean")])
@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_overview_heatmap_is_the_downsampled_model_weights(client, weights, layer, head,
                                                            reduce):
    n = weights.shape[-1]
    r = client.post("/api/heatmap", json={"text": TEXT, "layer": layer, "head": head,
                                          "size": 64, "reduce": reduce})
    assert r.status_code == 200, r.text
    data = r.json()
    a = weights[layer] if head == "mean" else weights[layer, head]
    want = reference_window(a, (0, n), (0, n), 64, reduce)
    got = torch.tensor(data["cells"], dtype=torch.float64)
    assert got.shape == (64, 64) and data["exact"] is False
    assert data["rows"][0] == 0 and data["rows"][-1] == n and len(data["rows"]) == 65
    assert (data["q"], data["k"], data["shape"]) == ([0, n], [0, n], [n, n])
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-4)  # float16 maps, 4 decimals


def test_zooming_in_reaches_the_exact_weights(client, weights):
    r = client.post("/api/heatmap", json={"text": TEXT, "layer": 1, "head": 0,
                                          "q": [300, 340], "k": [280, 330], "size": 256})
    data = r.json()
    assert data["exact"] is True
    assert data["rows"] == list(range(300, 341)) and data["cols"] == list(range(280, 331))
    torch.testing.assert_close(torch.tensor(data["cells"], dtype=torch.float64),
                               weights[1, 0, 300:340, 280:330], rtol=2e-3, atol=2e-4)


def test_mean_of_a_subset_of_heads(client, weights):
    r = client.post("/api/heatmap", json={"text": TEXT, "layer": 0, "head": "mean",
                                          "heads": [1], "q": [0, 20], "k": [0, 20]})
    torch.testing.assert_close(torch.tensor(r.json()["cells"], dtype=torch.float64),
                               weights[0, 1, :20, :20], rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("head", [1, "mean"])
def test_lines_are_each_querys_strongest_keys(client, weights, head):
    r = client.post("/api/lines", json={"text": TEXT, "layer": 1, "head": head,
                                        "q": [100, 140], "top_k": 6})
    assert r.status_code == 200, r.text
    data = r.json()
    a = weights[1].mean(0) if head == "mean" else weights[1, head]
    assert data["q"] == [100, 140] and len(data["keys"]) == 40
    for i, (keys, ws) in enumerate(zip(data["keys"], data["weights"], strict=True)):
        want_keys, want_w = reference_top(a, 100 + i, 6)
        assert ws == pytest.approx(want_w, abs=2e-3)  # the top-6 weights, strongest first
        # each key listed is a top-6 key; float16 storage may trade keys whose weights tie
        # within its rounding, so compare weights, not key sets
        assert len(set(keys)) == len(keys) == len(want_keys)
        for k, w in zip(keys, ws, strict=True):
            assert abs(float(a[100 + i, k]) - w) <= 2e-3 and w >= want_w[-1] - 2e-3
        assert all(k <= 100 + i for k in keys)  # causal


def test_views_come_from_the_cache(client, lm):
    client.post("/api/heatmap", json={"text": TEXT, "layer": 1, "head": 0})  # captured here
    calls = []
    handle = lm.register_forward_hook(lambda *_: calls.append(1))
    try:
        for head in (0, 1, "mean"):
            client.post("/api/heatmap", json={"text": TEXT, "layer": 1, "head": head})
            client.post("/api/lines", json={"text": TEXT, "layer": 1, "head": head,
                                            "q": [0, 10]})
    finally:
        handle.remove()
    assert calls == []  # one capture of layer 1 serves every head, view and zoom


def test_seq2seq_cross_attention_views(wordpiece):
    from attnkit.models import Seq2SeqConfig, Seq2SeqLM

    torch.manual_seed(0)
    model = Seq2SeqLM(Seq2SeqConfig.preset("t5-tiny", vocab_size=wordpiece.vocab_size,
                                           dropout=0.0)).eval()
    src, dec = "the quick brown fox jumps " * 3, "the lazy dog sleeps"
    with TestClient(create_app(model, wordpiece, dense_tokens=4), base_url=LOCAL) as c:
        data = c.post("/api/attention", json={"text": src, "decoder_text": dec}).json()
        assert data["windowed"] is True
        ns, nd = len(data["tokens"]), len(data["decoder_tokens"])
        assert data["kinds"]["cross"]["shape"] == [nd, ns]
        assert data["kinds"]["encoder"]["shape"] == [ns, ns]
        r = c.post("/api/heatmap", json={"text": src, "decoder_text": dec, "kind": "cross",
                                         "layer": 1, "head": 2})
        got = torch.tensor(r.json()["cells"], dtype=torch.float64)
        ids = torch.tensor([wordpiece.encode(src) + [wordpiece.end_id]])
        dec_ids = torch.tensor([[model.config.decoder_start_token_id]
                                + wordpiece.encode(dec)])
        with torch.no_grad():
            out = model(ids, decoder_input_ids=dec_ids, return_weights=True)
        want = out.cross_attentions[1][0, 2].double()
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-4)
        lines = c.post("/api/lines", json={"text": src, "decoder_text": dec, "kind": "cross",
                                           "layer": 0, "head": "mean", "q": [0, nd],
                                           "top_k": 3}).json()
        assert len(lines["keys"]) == nd and all(max(k) < ns for k in lines["keys"])


def test_over_the_memory_budget_is_413_with_the_way_out(lm, wordpiece):
    with TestClient(create_app(lm, wordpiece, max_tokens=512, memory_budget=100_000),
                    base_url=LOCAL) as c:
        r = c.post("/api/attention", json={"text": TEXT})
        assert r.status_code == 413
        assert "--max-tokens" in r.json()["detail"] and "memory budget" in r.json()["detail"]
