"""End to end in a real browser: the explorer served by uvicorn, driven by headless Chromium
(plumbing and requirements in ``_browser.py``)."""

from __future__ import annotations

import http.client
import json
import urllib.request

import pytest
import torch
from _browser import launch_browser, new_page, screenshot, serving

from attnkit.viz.capture import capture
from attnkit.viz.web import export_html, html_for_notebook

pytestmark = pytest.mark.slow

TEXT = "The animal didn't cross the street because it was too tired"
TOL = 1e-3

# JS helpers evaluated in the page
LINES_JS = """els => els.map(e => [+e.dataset.q, +e.dataset.k,
                                   +e.getAttribute('stroke-opacity'), +e.dataset.weight])"""
CELLS_JS = "els => els.map(e => [+e.dataset.q, +e.dataset.k, +e.dataset.weight])"


@pytest.fixture(scope="module")
def browser():
    yield from launch_browser()


@pytest.fixture(scope="module")
def server(tiny):
    from attnkit.viz.server import create_app

    model, tok = tiny
    with serving(create_app(model, tok)) as url:
        yield url


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def _check_lines(page, matrix: torch.Tensor) -> list:
    """Every pair at or above the page's threshold has exactly one line, whose opacity is
    the weight; nothing below it is drawn."""
    min_w = float(page.get_attribute("#lines", "data-min-weight"))
    lines = page.eval_on_selector_all("#lines line", LINES_JS)
    drawn = {(q, k): (op, w) for q, k, op, w in lines}
    assert len(drawn) == len(lines), "duplicate lines"
    for (q, k), (op, w) in drawn.items():
        assert abs(op - float(matrix[q, k])) <= TOL, (q, k, op, float(matrix[q, k]))
        assert abs(w - op) <= 1e-9
    expected = {(q, k) for q in range(matrix.shape[0]) for k in range(matrix.shape[1])
                if float(matrix[q, k]) >= min_w + TOL}
    assert expected <= set(drawn)
    assert all(float(matrix[q, k]) >= min_w - TOL for q, k in drawn)
    return lines


def test_explorer_in_chromium(browser, server, tiny, tmp_path):
    model, tok = tiny
    errors: list[str] = []
    page = new_page(browser, errors)
    page.goto(server + "/")
    # a function, not an expression: polling an expression needs eval, which the CSP forbids
    page.wait_for_function("() => document.getElementById('model-info').textContent"
                           ".includes('2 layers')")

    # the server's validation message reaches the status line
    page.fill("#text", "   ")
    page.click("#show")
    page.wait_for_selector("#status[data-state=error]")
    assert "text is empty" in page.text_content("#status")
    assert [e for e in errors if "422" not in e] == []  # the browser logs the 422 itself
    errors.clear()

    page.fill("#text", TEXT)
    page.click("#show")
    page.wait_for_selector("#status[data-state=ready]")

    api = _post(server + "/api/attention", {"text": TEXT})
    w = torch.tensor(api["kinds"]["self"]["weights"], dtype=torch.float64)  # (2, 4, L, L)
    n = len(tok.encode(TEXT))
    left = page.eval_on_selector_all('#lines .token[data-side="left"]',
                                     "els => els.map(e => e.textContent)")
    right = page.locator('#lines .token[data-side="right"]')
    assert len(left) == n == len(api["tokens"]) and right.count() == n
    assert left == api["tokens"]
    assert [o.get_attribute("value") for o in page.locator("#kind option").all()] == ["self"]
    assert page.locator("#layer option").count() == 2
    assert page.locator("#head option").count() == 5  # all + 4 heads

    # default: layer 0, all heads = mean over heads
    assert page.input_value("#layer") == "0" and page.input_value("#head") == "all"
    _check_lines(page, w[0].mean(0))

    # one head of layer 1, then another head: the lines follow the API weights
    page.select_option("#layer", "1")
    page.select_option("#head", "2")
    before = _check_lines(page, w[1, 2])
    page.select_option("#head", "3")
    after = _check_lines(page, w[1, 3])
    assert before != after
    assert "head 3" in page.text_content("#status")

    # hover a query token: its lines are focused, every other line dimmed
    q = 5
    page.hover(f'#lines .token[data-side="left"][data-index="{q}"]')
    page.wait_for_selector("#lines.has-focus")
    state = page.eval_on_selector_all(
        "#lines line", "els => els.map(e => [+e.dataset.q, e.classList.contains('focused'), "
        "+getComputedStyle(e).opacity])")
    assert any(f for _, f, _ in state)
    for lq, focused, opacity in state:  # focused: its own lines; dimmed: every other line
        assert focused == (lq == q)
        assert (opacity == 1.0) if focused else (opacity < 0.2)
    assert "focused" in page.get_attribute(
        f'#lines .token[data-side="left"][data-index="{q}"]', "class")
    assert page.text_content("#hover-info").startswith(f"“{api['tokens'][q]}”")
    screenshot(page, tmp_path, "explorer-lines.png")
    page.mouse.move(1000, 10)
    page.wait_for_selector("#lines:not(.has-focus)")
    assert page.locator("#lines line.focused").count() == 0
    assert page.eval_on_selector("#lines line", "e => +getComputedStyle(e).opacity") == 1.0

    # heatmap: one cell per pair, values from the API, hover shows the value
    page.select_option("#view", "heatmap")
    assert page.is_hidden("#lines-view") and page.is_visible("#heatmap")
    cells = page.eval_on_selector_all("#heatmap rect.cell", CELLS_JS)
    assert len(cells) == n * n
    for cq, ck, cw in cells:
        assert abs(cw - float(w[1, 3, cq, ck])) <= TOL
    page.hover('#heatmap rect.cell[data-q="7"][data-k="1"]')
    assert page.text_content("#hover-info").endswith(f"{float(w[1, 3, 7, 1]):.4f}")
    shot = screenshot(page, tmp_path, "explorer-heatmap.png")
    assert shot.stat().st_size > 5_000
    assert errors == []

    # the live server, asked without client-side path normalisation, keeps its source private
    host, port = server.removeprefix("http://").split(":")
    for raw in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py"):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", raw)
        assert conn.getresponse().status == 404, raw
        conn.close()


def test_exported_file_renders_offline(browser, tiny, tmp_path):
    model, tok = tiny
    cap = capture(model, tok, TEXT)
    path = export_html(cap, tmp_path / "snapshot.html")
    errors: list[str] = []
    page = new_page(browser, errors)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_selector("#status[data-state=ready]")
    assert page.locator('#lines .token[data-side="left"]').count() == len(cap.tokens)
    _check_lines(page, cap.weights["self"][0].double().mean(0))
    assert page.is_disabled("#text") and page.is_disabled("#show")
    assert page.is_visible("#embedded-note")
    assert page.input_value("#text") == TEXT
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    screenshot(page, tmp_path, "explorer-export.png")

    # the notebook form: the same page inside <iframe srcdoc> (what IPython.display.HTML shows)
    page.set_content(f"<!doctype html><html><body>{html_for_notebook(cap)}</body></html>")
    frame = page.frame_locator("iframe")
    frame.locator("#status[data-state=ready]").wait_for()
    assert frame.locator('#lines .token[data-side="left"]').count() == len(cap.tokens)
    assert errors == []


def test_exported_seq2seq_switches_kinds(browser, tmp_path, wordpiece):
    from attnkit.models import Seq2SeqConfig, Seq2SeqLM

    tok = wordpiece
    cfg = Seq2SeqConfig.preset("t5-tiny", vocab_size=tok.vocab_size, dropout=0.0)
    cap = capture(Seq2SeqLM(cfg).eval(), tok, "the quick brown fox", decoder_text="the dog")
    errors: list[str] = []
    page = new_page(browser, errors)
    page.goto(export_html(cap, tmp_path / "s2s.html").as_uri())
    page.wait_for_selector("#status[data-state=ready]")
    kinds = [o.get_attribute("value") for o in page.locator("#kind option").all()]
    assert kinds == ["encoder", "decoder", "cross"]
    page.select_option("#kind", "cross")
    page.select_option("#head", "1")
    side = 'els => els.map(e => e.textContent)'
    assert page.eval_on_selector_all('#lines .token[data-side="left"]', side) == \
        cap.decoder_tokens
    assert page.eval_on_selector_all('#lines .token[data-side="right"]', side) == cap.tokens
    _check_lines(page, cap.weights["cross"][0, 1].double())
    assert errors == []
