/* attnkit attention explorer — views of long inputs (served payloads with "windowed": true).
 *
 * A long input's maps stay on the server; the page asks for views of the map on show
 * (POST api/heatmap, POST api/lines, documented in attnkit/viz/server.py) and draws only
 * them, so nothing here grows with Lq·Lk:
 *   heatmap — a canvas of at most SIZE × SIZE cells, each the max (or mean) of a block of the
 *             region on show; drag a rectangle to zoom into it, double-click to zoom in
 *             around a cell, the wheel zooms in/out around the pointer, "Zoom out" / "Whole
 *             map" step back. A window of at most SIZE tokens a side is exact: one cell per
 *             pair, labelled with its tokens. Colours span the cells in view: "log" from
 *             a thousandth of the largest to the largest (attention over thousands of keys
 *             spans decades), or "linear" from 0 to the largest.
 *   lines   — QUERIES consecutive queries (from "from token"; ◀ ▶ step, a click on the
 *             heatmap jumps there) and each one's top-k keys; the keys shown are listed in
 *             order on the right, with a gap mark where positions are skipped. A line's
 *             opacity is its weight relative to its query's strongest key.
 * Test hooks: #status[data-state], canvas#heatmap-canvas[data-q0/q1/k0/k1/rows/cols/vmax],
 * line[data-q][data-k][data-weight], .token[data-side][data-index], window.attnkitWindowed.
 */
"use strict";
(function () {
  const SIZE = 256; // heatmap cells per side asked for
  const MAX_PX = 640; // heatmap plot area, CSS pixels a side at most
  const QUERIES = 32; // queries per lines view
  const ROW = 20; // lines view row height
  const WHEEL_MS = 150; // wheel zooms are sent after this quiet time
  const LOG_RANGE = 1000; // the log colour scale spans three decades below the largest cell
  const fmt = (v) => Number(v.toPrecision(3)).toString();

  let app = null; // what app.js hands over: {state, $, svgEl, setStatus, cellColor, headColor}
  const W = {
    kind: null, region: null, view: null, geom: null, lines: null, linesStart: 0,
    seq: 0, drag: null, wheelTimer: 0,
  };

  // ---- requests ------------------------------------------------------------------------------
  function selection() {
    const { state, $ } = app;
    const kind = $("kind").value;
    const head = $("head").value;
    const body = {
      text: state.data.text, kind, layer: Number($("layer").value),
      head: head === "all" ? "mean" : Number(head),
    };
    if (state.data.decoder_text != null) body.decoder_text = state.data.decoder_text;
    if (head === "all") body.heads = state.data.kinds[kind].heads;
    return body;
  }

  async function post(path, body) {
    const res = await fetch(path, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const payload = await res.json().catch(() => null);
    if (!res.ok) {
      const d = payload && payload.detail;
      throw new Error(typeof d === "string" ? d : `HTTP ${res.status}`);
    }
    return payload;
  }

  /** Run one view request; only the newest one's answer is drawn. */
  function request(what, path, body, draw) {
    const id = ++W.seq;
    app.setStatus(`Computing the ${what}…`, "loading");
    post(path, body).then((view) => {
      if (id !== W.seq) return;
      draw(view);
    }).catch((err) => {
      if (id === W.seq) app.setStatus(`Error: ${err.message}`, "error");
    });
  }

  // ---- entry points (called by app.js) -------------------------------------------------------
  function shape() {
    return app.state.data.kinds[app.$("kind").value].shape; // [Lq, Lk]
  }

  function axes() {
    const d = app.state.data;
    const enc = d.tokens, dec = d.decoder_tokens || enc;
    const kind = app.$("kind").value;
    if (kind === "cross") return { q: dec, k: enc };
    if (kind === "decoder") return { q: dec, k: dec };
    return { q: enc, k: enc };
  }

  function render() {
    const { $ } = app;
    const kind = $("kind").value;
    if (W.kind !== kind) { // a new input or kind: the whole map, the first queries
      const [lq, lk] = shape();
      W.kind = kind;
      W.region = { q: [0, lq], k: [0, lk] };
      W.linesStart = 0;
    }
    const lines = $("view").value === "lines";
    $("lines-view").hidden = !lines;
    $("heatmap-view").hidden = true;
    $("canvas-view").hidden = lines;
    for (const el of document.querySelectorAll(".only-lines")) el.hidden = !lines;
    for (const el of document.querySelectorAll(".only-heatmap")) el.hidden = lines;
    $("hover-info").textContent = "";
    if (lines) fetchLines();
    else fetchHeatmap();
  }

  function reset() {
    W.kind = null;
    W.view = W.lines = null;
  }

  // ---- heatmap -------------------------------------------------------------------------------
  function fetchHeatmap() {
    const body = {
      ...selection(), q: W.region.q, k: W.region.k, size: SIZE, reduce: app.$("reduce").value,
    };
    request("heatmap", "api/heatmap", body, drawHeatmap);
  }

  function drawHeatmap(view) {
    const { $ } = app;
    W.view = view;
    const cells = view.cells, R = cells.length, C = cells[0].length;
    const cell = Math.max(1, Math.floor(MAX_PX / Math.max(R, C)));
    const { q: qTok, k: kTok } = axes();
    const labels = view.exact && cell >= 10;
    const left = labels ? labelWidth(view.rows, qTok) : 52;
    const top = labels ? Math.min(120, labelWidth(view.cols, kTok) * 0.8 + 8) : 22;
    const width = left + C * cell + 8, height = top + R * cell + 8;
    let vmax = 0;
    for (const row of cells) for (const v of row) if (v > vmax) vmax = v;
    const log = $("scale").value === "log";
    const lo = vmax / LOG_RANGE;
    const shade = log
      ? (v) => (v > lo ? Math.log(v / lo) / Math.log(LOG_RANGE) : 0)
      : (v) => (vmax > 0 ? v / vmax : 0);

    const img = new ImageData(C, R);
    for (let i = 0; i < R; i++) {
      for (let j = 0; j < C; j++) {
        const [r, g, b] = app.cellRGB(shade(cells[i][j]));
        const o = 4 * (i * C + j);
        img.data[o] = r; img.data[o + 1] = g; img.data[o + 2] = b; img.data[o + 3] = 255;
      }
    }
    const small = document.createElement("canvas");
    small.width = C; small.height = R;
    small.getContext("2d").putImageData(img, 0, 0);

    const canvas = $("heatmap-canvas");
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(small, left, top, C * cell, R * cell);
    drawAxes(ctx, view, { left, top, cell, labels, qTok, kTok });

    W.geom = { left, top, cell, R, C };
    Object.assign(canvas.dataset, {
      q0: view.rows[0], q1: view.rows[R], k0: view.cols[0], k1: view.cols[C], rows: R, cols: C,
      vmax, scale: log ? "log" : "linear", cell, left, top, exact: view.exact,
    });
    const [lq, lk] = view.shape;
    const what = view.exact ? "exact weights" : `${R} × ${C} blocks, the ${view.reduce} of each`;
    app.setStatus(`${lq} × ${lk} tokens · ${view.kind} · layer ${view.layer} · ` +
      (view.head === "mean" ? "mean of heads" : `head ${view.head}`) +
      ` · queries ${view.rows[0]}–${view.rows[R] - 1}, keys ${view.cols[0]}–${view.cols[C] - 1}` +
      ` · ${what} · colour ${log ? `log ${fmt(lo)}` : "linear 0"} – ${fmt(vmax)}` +
      " · drag to zoom, double-click to zoom in" +
      notes(), "ready");
  }

  function labelWidth(bounds, tokens) {
    let longest = 1;
    for (let i = 0; i + 1 < bounds.length; i++) {
      longest = Math.max(longest, tokens[bounds[i]].length);
    }
    return Math.min(200, Math.max(40, longest * 7 + 12));
  }

  function drawAxes(ctx, view, g) {
    ctx.fillStyle = "#1f2937";
    ctx.font = `${g.labels ? Math.min(12, g.cell - 2) : 10}px system-ui, sans-serif`;
    const R = view.rows.length - 1, C = view.cols.length - 1;
    if (g.labels) {
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      for (let i = 0; i < R; i++) {
        ctx.fillText(g.qTok[view.rows[i]], g.left - 4, g.top + g.cell * (i + 0.5));
      }
      ctx.textAlign = "left";
      for (let j = 0; j < C; j++) {
        ctx.save();
        ctx.translate(g.left + g.cell * (j + 0.5), g.top - 4);
        ctx.rotate(-Math.PI / 3);
        ctx.fillText(g.kTok[view.cols[j]], 0, 0);
        ctx.restore();
      }
      return;
    }
    const every = Math.max(1, Math.ceil(48 / g.cell)); // a tick every ~48 px: the block start
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i < R; i += every) {
      ctx.fillText(String(view.rows[i]), g.left - 4, g.top + g.cell * i + 4);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    for (let j = 0; j < C; j += every) {
      ctx.fillText(String(view.cols[j]), g.left + g.cell * j + 4, g.top - 4);
    }
  }

  /** The cell under a mouse event, or null. */
  function cellAt(e) {
    const g = W.geom;
    if (!g || !W.view) return null;
    const box = app.$("heatmap-canvas").getBoundingClientRect();
    const i = Math.floor((e.clientY - box.top - g.top) / g.cell);
    const j = Math.floor((e.clientX - box.left - g.left) / g.cell);
    if (i < 0 || j < 0 || i >= g.R || j >= g.C) return null;
    return { i, j };
  }

  function describeCell(c) {
    const v = W.view, { q, k } = axes();
    const w = v.cells[c.i][c.j];
    const q0 = v.rows[c.i], q1 = v.rows[c.i + 1] - 1, k0 = v.cols[c.j], k1 = v.cols[c.j + 1] - 1;
    if (v.exact) return `“${q[q0]}” (${q0}) → “${k[k0]}” (${k0}): ${w.toPrecision(4)}`;
    return `queries ${q0}–${q1} → keys ${k0}–${k1}: ${v.reduce} ${w.toPrecision(4)}`;
  }

  function zoomTo(q0, q1, k0, k1) {
    const [lq, lk] = shape();
    const clamp = (a, b, n) => {
      a = Math.max(0, Math.min(a, n - 1));
      b = Math.max(a + 1, Math.min(b, n));
      return [a, b];
    };
    W.region = { q: clamp(q0, q1, lq), k: clamp(k0, k1, lk) };
    fetchHeatmap();
  }

  /** Zoom by `factor` (< 1: in) keeping the position (cq, ck) where it is. */
  function zoomAround(factor, cq, ck) {
    const [lq, lk] = shape();
    const span = (s, n) => Math.max(1, Math.min(n, Math.round((s[1] - s[0]) * factor)));
    const place = (s, c, m, n) => {
      const a = Math.round(c - (c - s[0]) * (m / (s[1] - s[0])));
      const start = Math.max(0, Math.min(a, n - m));
      return [start, start + m];
    };
    const mq = span(W.region.q, lq), mk = span(W.region.k, lk);
    const q = place(W.region.q, cq, mq, lq), k = place(W.region.k, ck, mk, lk);
    zoomTo(q[0], q[1], k[0], k[1]);
  }

  function centerOf(c) {
    const v = W.view;
    return [(v.rows[c.i] + v.rows[c.i + 1]) / 2, (v.cols[c.j] + v.cols[c.j + 1]) / 2];
  }

  function showBox(a, b) {
    const g = W.geom, box = app.$("zoom-box");
    const i0 = Math.min(a.i, b.i), i1 = Math.max(a.i, b.i), j0 = Math.min(a.j, b.j);
    const j1 = Math.max(a.j, b.j);
    Object.assign(box.style, {
      left: `${g.left + j0 * g.cell}px`, top: `${g.top + i0 * g.cell}px`,
      width: `${(j1 - j0 + 1) * g.cell}px`, height: `${(i1 - i0 + 1) * g.cell}px`,
    });
    box.hidden = false;
  }

  function onDown(e) {
    const c = cellAt(e);
    if (!c || e.button !== 0) return;
    e.preventDefault();
    W.drag = { from: c, to: c };
  }

  function onMove(e) {
    const c = cellAt(e);
    if (W.drag) {
      if (c) W.drag.to = c;
      showBox(W.drag.from, W.drag.to);
    }
    app.$("hover-info").textContent = c ? describeCell(c) : "";
  }

  function onUp() {
    const d = W.drag;
    W.drag = null;
    app.$("zoom-box").hidden = true;
    if (!d) return;
    const v = W.view;
    const i0 = Math.min(d.from.i, d.to.i), i1 = Math.max(d.from.i, d.to.i);
    const j0 = Math.min(d.from.j, d.to.j), j1 = Math.max(d.from.j, d.to.j);
    if (i0 === i1 && j0 === j1) { // a click: the lines view starts at this query block
      W.linesStart = v.rows[i0];
      app.$("lines-start").value = String(W.linesStart);
      app.$("hover-info").textContent = `${describeCell(d.from)} · lines view: from token ` +
        `${W.linesStart}`;
      return;
    }
    zoomTo(v.rows[i0], v.rows[i1 + 1], v.cols[j0], v.cols[j1 + 1]);
  }

  function onDblClick(e) {
    const c = cellAt(e);
    if (c) zoomAround(0.25, ...centerOf(c));
  }

  function onWheel(e) {
    const c = cellAt(e);
    if (!c) return;
    e.preventDefault();
    const [cq, ck] = centerOf(c);
    clearTimeout(W.wheelTimer);
    const factor = e.deltaY < 0 ? 0.5 : 2;
    W.wheelTimer = setTimeout(() => zoomAround(factor, cq, ck), WHEEL_MS);
  }

  // ---- lines ---------------------------------------------------------------------------------
  function fetchLines() {
    const [lq] = shape();
    const start = Math.max(0, Math.min(W.linesStart, lq - 1));
    W.linesStart = start;
    app.$("lines-start").value = String(start);
    app.$("lines-start").max = String(lq - 1);
    const topK = Math.max(1, Math.min(32, Number(app.$("top-k").value) || 5));
    const body = { ...selection(), q: [start, Math.min(lq, start + QUERIES)], top_k: topK };
    request("lines", "api/lines", body, drawLines);
  }

  function drawLines(view) {
    const { $, svgEl } = app;
    W.lines = view;
    const { q: qTok, k: kTok } = axes();
    const [q0, q1] = view.q;
    const keys = [...new Set(view.keys.flat())].sort((a, b) => a - b);
    // right-hand rows: keys in order, half a row of gap where positions are skipped
    const yKey = new Map();
    const gaps = [];
    let y = 0;
    keys.forEach((k, i) => {
      if (i > 0 && k > keys[i - 1] + 1) { gaps.push(y + 0.25); y += 0.5; }
      yKey.set(k, y);
      y += 1;
    });
    const nRows = Math.max(q1 - q0, y);
    const labelW = (list) => Math.min(200, Math.max(40, list.reduce((n, t) =>
      Math.max(n, t.length), 1) * 8 + 12));
    const pos = 44, left = pos + labelW(qTok.slice(q0, q1)), gap = 260, top = 14;
    const right = left + gap;
    const width = right + labelW(keys.map((k) => kTok[k])) + pos;
    const height = top + ROW * nRows + 8;
    const svg = $("lines");
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.dataset.minWeight = "0";
    const yq = (i) => top + ROW * (i - q0) + ROW / 2;
    const yk = (k) => top + ROW * yKey.get(k) + ROW / 2;

    const g = svgEl("g", { class: "links", stroke: app.headColor($("head").value) }, svg);
    view.keys.forEach((ks, i) => {
      const ws = view.weights[i];
      const best = ws.length ? ws[0] : 1;
      ks.forEach((k, n) => {
        svgEl("line", {
          x1: left + 6, y1: yq(q0 + i), x2: right - 6, y2: yk(k),
          "stroke-opacity": best > 0 ? ws[n] / best : 0, "data-q": q0 + i, "data-k": k,
          "data-weight": ws[n],
        }, g);
      });
    });
    const label = (text, side, index, x, yy, anchor) => {
      svgEl("text", {
        class: "token", x, y: yy, "text-anchor": anchor, "dominant-baseline": "central",
        "data-side": side, "data-index": index,
      }, svg).textContent = text;
      svgEl("text", {
        class: "pos", x: side === "left" ? pos - 6 : width - pos + 6, y: yy,
        "text-anchor": side === "left" ? "end" : "start", "dominant-baseline": "central",
      }, svg).textContent = String(index);
    };
    for (let i = q0; i < q1; i++) label(qTok[i], "left", i, left, yq(i), "end");
    for (const k of keys) label(kTok[k], "right", k, right, yk(k), "start");
    for (const gy of gaps) {
      svgEl("text", {
        class: "gap", x: right + 4, y: top + ROW * gy + 2, "dominant-baseline": "central",
      }, svg).textContent = "⋯";
    }
    const [lq, lk] = view.shape;
    app.setStatus(`${lq} × ${lk} tokens · ${view.kind} · layer ${view.layer} · ` +
      (view.head === "mean" ? "mean of heads" : `head ${view.head}`) +
      ` · queries ${q0}–${q1 - 1} and their top ${view.top_k} keys (opacity: relative to each` +
      ` query's strongest) · ◀ ▶ for more` + notes(), "ready");
  }

  function focus(side, index) {
    const v = W.lines;
    if (!v) return;
    const svg = app.$("lines");
    clearFocus();
    const attr = side === "left" ? "data-q" : "data-k";
    for (const el of svg.querySelectorAll(`line[${attr}="${index}"], ` +
        `.token[data-side="${side}"][data-index="${index}"]`)) el.classList.add("focused");
    svg.classList.add("has-focus");
    const { q, k } = axes();
    let pairs;
    if (side === "left") {
      const i = index - v.q[0];
      pairs = v.keys[i].map((kk, n) => `${k[kk]} (${kk}) ${v.weights[i][n].toPrecision(3)}`);
      app.$("hover-info").textContent = `“${q[index]}” (${index}) attends most to: ` +
        pairs.slice(0, 5).join(", ");
    } else {
      pairs = [];
      v.keys.forEach((ks, i) => {
        const n = ks.indexOf(index);
        if (n >= 0) pairs.push([v.weights[i][n], v.q[0] + i]);
      });
      pairs.sort((a, b) => b[0] - a[0]);
      app.$("hover-info").textContent = `attending most to “${k[index]}” (${index}): ` +
        pairs.slice(0, 5).map(([w, qi]) => `${q[qi]} (${qi}) ${w.toPrecision(3)}`).join(", ");
    }
  }

  function clearFocus() {
    const svg = app.$("lines");
    svg.classList.remove("has-focus");
    for (const el of svg.querySelectorAll(".focused")) el.classList.remove("focused");
    app.$("hover-info").textContent = "";
  }

  function step(delta) {
    W.linesStart = Math.max(0, Math.min(shape()[0] - 1, W.linesStart + delta));
    fetchLines();
  }

  function notes() {
    return (app.state.data.warnings || []).map((w) => ` · ${w}`).join("");
  }

  // ---- wiring --------------------------------------------------------------------------------
  function init(context) {
    app = context;
    const { $ } = app;
    const canvas = $("heatmap-canvas");
    canvas.addEventListener("mousedown", onDown);
    canvas.addEventListener("mousemove", onMove);
    canvas.addEventListener("mouseleave", () => {
      if (!W.drag) $("hover-info").textContent = "";
    });
    window.addEventListener("mouseup", onUp);
    canvas.addEventListener("dblclick", onDblClick);
    canvas.addEventListener("wheel", onWheel, { passive: false });
    $("zoom-out").addEventListener("click", () => {
      const r = W.region;
      zoomAround(2, (r.q[0] + r.q[1]) / 2, (r.k[0] + r.k[1]) / 2);
    });
    $("zoom-reset").addEventListener("click", () => {
      const [lq, lk] = shape();
      zoomTo(0, lq, 0, lk);
    });
    $("reduce").addEventListener("change", fetchHeatmap);
    $("scale").addEventListener("change", () => { if (W.view) drawHeatmap(W.view); });
    $("top-k").addEventListener("change", fetchLines);
    $("lines-prev").addEventListener("click", () => step(-QUERIES));
    $("lines-next").addEventListener("click", () => step(QUERIES));
    $("lines-start").addEventListener("change", () => {
      W.linesStart = Number($("lines-start").value) || 0;
      fetchLines();
    });
  }

  window.attnkitWindowed = { init, render, reset, focus, clearFocus, state: W, zoomTo };
})();
