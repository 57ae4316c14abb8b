"""A 4,096-token input in headless Chromium: the explorer answers within its time budget, its
main thread never blocks long enough to freeze the page, and what it draws — a downsampled
overview, zoomed windows down to exact weights, top-k lines — is the model's own attention.

Budgets (a loaded 2-core CI machine; the server computes one layer's 4096 × 4096 maps on CPU):
the first view within SHOW_S of pressing Show, each later view within VIEW_S, and no main-
thread task longer than TASK_MS (Chromium's Long Tasks API; a page that drew all 16.7 M pairs
would block for minutes).
"""

from __future__ import annotations

import json
import math
import time
import urllib.request

import pytest
import torch
from _browser import launch_browser, new_page, screenshot, serving

from attnkit.models import CausalLM, CausalLMConfig

pytestmark = pytest.mark.slow

N = 4096
SHOW_S, VIEW_S, TASK_MS = 60.0, 20.0, 250.0
WORDS = ("the quick brown fox jumps over the lazy dog while attention heads look back at "
         "every token they have seen so far").split()
LONG_TASKS_JS = """
window.__longTasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__longTasks.push(e.duration);
}).observe({ type: "longtask", buffered: true });
"""
VIEW_JS = "() => { const v = window.attnkitWindowed.state.view; return v && " \
          "{rows: v.rows, cols: v.cols, cells: v.cells, exact: v.exact}; }"


@pytest.fixture(scope="module")
def browser():
    yield from launch_browser()


@pytest.fixture(scope="module")
def long_case(wordpiece):
    """A causal LM with a 4096-position table, a text of more than 4096 tokens, and the
    model's own maps of its first 4096: ``(model, text, ids, weights (2, 2, N, N))``."""
    torch.manual_seed(0)
    model = CausalLM(CausalLMConfig(vocab_size=wordpiece.vocab_size, max_seq_len=N,
                                    d_model=32, n_layers=2, n_heads=2, d_ff=64)).eval()
    text = " ".join(WORDS[i % len(WORDS)] for i in range(4300))
    ids = wordpiece.encode(text)
    assert len(ids) > N
    with torch.no_grad():
        out = model(torch.tensor([ids[:N]]), return_weights=True)
    weights = torch.stack([a[0] for a in out.attentions])  # (layers, heads, N, N) float32
    return model, text, ids[:N], weights


@pytest.fixture(scope="module")
def long_server(long_case, wordpiece):
    from attnkit.viz.server import create_app

    model = long_case[0]
    with serving(create_app(model, wordpiece, max_tokens=N, max_chars=60_000)) as url:
        yield url


def _wait_ready(page, started: float, budget: float) -> float:
    page.wait_for_selector("#status[data-state=ready]", timeout=budget * 1000)
    return time.monotonic() - started


def _act(page, action, budget: float = VIEW_S) -> float:
    """Run ``action`` (which starts a view request) and wait for the view; its seconds."""
    page.evaluate("() => { document.getElementById('status').dataset.state = 'stale'; }")
    t0 = time.monotonic()
    action()
    return _wait_ready(page, t0, budget)


def _cell_center(page, i: int, j: int) -> tuple[float, float]:
    box = page.locator("#heatmap-canvas").bounding_box()
    d = page.eval_on_selector("#heatmap-canvas", "c => ({...c.dataset})")
    cell, left, top = float(d["cell"]), float(d["left"]), float(d["top"])
    return box["x"] + left + cell * (j + 0.5), box["y"] + top + cell * (i + 0.5)


def test_4096_tokens_stay_responsive_and_show_the_models_attention(
        browser, long_server, long_case, tmp_path):
    model, text, ids, weights = long_case
    errors: list[str] = []
    page = new_page(browser, errors)
    page.add_init_script(LONG_TASKS_JS)
    page.goto(long_server + "/")
    page.wait_for_function("() => document.getElementById('model-info').textContent"
                           ".includes('2 layers')")
    page.fill("#text", text)
    timings = {}

    # Show: the lines view of the first 32 queries, with each one's top-5 keys
    timings["show"] = _act(page, lambda: page.click("#show"), SHOW_S)
    status = page.text_content("#status")
    assert f"{N} × {N} tokens" in status and "truncated" in status, status
    lines = page.eval_on_selector_all(
        "#lines line", "els => els.map(e => [+e.dataset.q, +e.dataset.k, +e.dataset.weight])")
    assert 32 <= len(lines) <= 32 * 5
    mean0 = weights[0].double().mean(0)
    for q, k, w in lines:  # each line is one of its query's 5 strongest keys (model weights)
        assert 0 <= q < 32 and k <= q
        assert abs(float(mean0[q, k]) - w) <= 2e-3
        assert w >= float(mean0[q].topk(min(5, q + 1)).values[-1]) - 2e-3
    assert page.locator('#lines .token[data-side="left"]').count() == 32
    right = page.eval_on_selector_all('#lines .token[data-side="right"]',
                                      "els => els.map(e => +e.dataset.index)")
    assert right == sorted({k for _, k, _ in lines})
    page.hover('#lines .token[data-side="left"][data-index="20"]')
    assert page.text_content("#hover-info").startswith("“")
    timings["next"] = _act(page, lambda: page.click("#lines-next"))
    qs = page.eval_on_selector_all("#lines line", "els => els.map(e => +e.dataset.q)")
    assert min(qs) == 32 and max(qs) == 63

    # heatmap: the overview is 256 x 256 blocks, each the max of a 16 x 16 block of the model's
    # weights (layer 0, mean of heads)
    timings["heatmap"] = _act(page, lambda: page.select_option("#view", "heatmap"))
    view = page.evaluate(VIEW_JS)
    assert view["rows"] == list(range(0, N + 1, 16)) and not view["exact"]
    want = mean0.view(256, 16, 256, 16).amax((1, 3))  # an independent formula
    torch.testing.assert_close(torch.tensor(view["cells"], dtype=torch.float64), want,
                               rtol=2e-3, atol=2e-4)
    # the canvas shows them: the pixel at a cell's centre has that cell's colour
    d = page.eval_on_selector("#heatmap-canvas", "c => ({...c.dataset})")
    assert (d["rows"], d["cols"], d["q0"], d["q1"]) == ("256", "256", "0", str(N))
    vmax = float(d["vmax"])
    assert d["scale"] == "log"  # the default: three decades below the largest cell

    def shade(v: float) -> float:
        return min(1.0, max(0.0, math.log(v / (vmax / 1000)) / math.log(1000))) if v > 0 else 0
    for i, j in ((0, 0), (100, 40), (255, 255), (200, 3)):
        x, y = _cell_center(page, i, j)
        box = page.locator("#heatmap-canvas").bounding_box()
        px = page.evaluate(
            "([x, y]) => { const c = document.getElementById('heatmap-canvas'); "
            "const r = devicePixelRatio; return Array.from(c.getContext('2d')"
            ".getImageData(Math.floor(x * r), Math.floor(y * r), 1, 1).data); }",
            [x - box["x"], y - box["y"]])
        t = shade(view["cells"][i][j])
        rgb = [round(a + (b - a) * t) for a, b in ((247, 8), (251, 48), (255, 107))]
        assert all(abs(p - c) <= 2 for p, c in zip(px[:3], rgb, strict=True)), (i, j, px, rgb)
    screenshot(page, tmp_path, "explorer-long-overview.png")

    # switch head: layer 1, head 1 (another layer: captured now)
    timings["layer"] = _act(page, lambda: page.select_option("#layer", "1"))
    timings["head"] = _act(page, lambda: page.select_option("#head", "1"))
    view = page.evaluate(VIEW_JS)
    want = weights[1, 1].double().view(256, 16, 256, 16).amax((1, 3))
    torch.testing.assert_close(torch.tensor(view["cells"], dtype=torch.float64), want,
                               rtol=2e-3, atol=2e-4)

    # drag a rectangle over blocks 200..203 x 190..193: queries 3200..3264, keys 3040..3104,
    # 64 x 64 pairs, shown exactly
    def drag():
        page.mouse.move(*_cell_center(page, 200, 190))
        page.mouse.down()
        page.mouse.move(*_cell_center(page, 202, 192), steps=4)
        page.mouse.move(*_cell_center(page, 203, 193), steps=2)
        page.mouse.up()

    timings["zoom"] = _act(page, drag)
    view = page.evaluate(VIEW_JS)
    assert view["exact"] and view["rows"][0] == 3200 and view["rows"][-1] == 3264
    assert view["cols"][0] == 3040 and view["cols"][-1] == 3104
    torch.testing.assert_close(torch.tensor(view["cells"], dtype=torch.float64),
                               weights[1, 1, 3200:3264, 3040:3104].double(), rtol=2e-3,
                               atol=2e-4)
    page.mouse.move(*_cell_center(page, 10, 20))
    info = page.text_content("#hover-info")  # “tok” (3210) → “tok” (3060): 0.0123
    assert info.startswith("“") and "(3210) →" in info and "(3060):" in info, info
    assert abs(float(info.rsplit(" ", 1)[1]) - float(weights[1, 1, 3210, 3060])) <= 2e-3
    screenshot(page, tmp_path, "explorer-long-zoomed.png")

    # double-click zooms in around a cell; "Zoom out" and "Whole map" step back
    timings["dblclick"] = _act(page, lambda: page.mouse.dblclick(*_cell_center(page, 32, 32)))
    view = page.evaluate(VIEW_JS)
    assert len(view["rows"]) - 1 == 16 and view["exact"]
    timings["zoom_out"] = _act(page, lambda: page.click("#zoom-out"))
    assert len(page.evaluate(VIEW_JS)["rows"]) - 1 == 32
    timings["wheel"] = _act(page, lambda: (page.mouse.move(*_cell_center(page, 5, 5)),
                                           page.mouse.wheel(0, 300)))
    assert len(page.evaluate(VIEW_JS)["rows"]) - 1 == 64
    timings["reset"] = _act(page, lambda: page.click("#zoom-reset"))
    assert page.evaluate(VIEW_JS)["rows"][-1] == N

    # a click on a block starts the lines view at its queries
    page.mouse.click(*_cell_center(page, 128, 0))
    timings["lines_at"] = _act(page, lambda: page.select_option("#view", "lines"))
    qs = page.eval_on_selector_all("#lines line", "els => els.map(e => +e.dataset.q)")
    assert min(qs) == 2048 and max(qs) == 2048 + 31

    long_tasks = page.evaluate("() => window.__longTasks")
    print(f"\nlong input ({N} tokens): seconds per view {json.dumps(timings)}; "
          f"main-thread tasks over 50 ms: {[round(t) for t in long_tasks]}")
    assert timings["show"] <= SHOW_S
    assert all(t <= VIEW_S for t in timings.values())
    assert max(long_tasks, default=0.0) <= TASK_MS, long_tasks
    assert errors == []

    # the API the page used answers the same for a plain client
    req = urllib.request.Request(
        long_server + "/api/lines",
        data=json.dumps({"text": text, "layer": 1, "head": 1, "q": [2048, 2080],
                         "top_k": 5}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        api = json.load(r)
    drawn = page.eval_on_selector_all(
        "#lines line", "els => els.map(e => [+e.dataset.q, +e.dataset.k, +e.dataset.weight])")
    assert sorted(drawn) == sorted([2048 + i, k, w] for i, (ks, ws) in
                                   enumerate(zip(api["keys"], api["weights"], strict=True))
                                   for k, w in zip(ks, ws, strict=True))
