/* attnkit attention explorer — vanilla JS + SVG, no dependencies.
 *
 * Data: the JSON documented in attnkit/viz/web/__init__.py —
 *   {tokens, decoder_tokens, kinds: {kind: {layers, heads, weights[layer][head][q][k]}}, model}
 * It comes either from POST api/attention (served by `attnkit viz serve`) or from an embedded
 * <script type="application/json" id="attn-data"> block (a file written by export_html).
 *
 * Views: "lines" (BertViz-like: query tokens left, key tokens right, one line per pair whose
 * stroke-opacity is the weight; hover a token: its lines get class "focused", the svg class
 * "has-focus", and CSS dims the other lines) and "heatmap" (an SVG grid).
 * Head "all" shows the mean over the heads. Test hooks: .token[data-side][data-index],
 * line[data-q][data-k][data-weight], rect.cell[data-q][data-k][data-weight], #status[data-state].
 *
 * A long input's payload has "windowed": true and no weights: windowed.js (loaded first)
 * draws server-computed views of it instead, with the same controls.
 */
"use strict";
(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const MIN_WEIGHT = 0.001; // lines (not heatmap cells) below this are not drawn: invisible anyway
  const MEAN_COLOR = "#2563eb";

  const $ = (id) => document.getElementById(id);
  const state = { data: null, embedded: false, request: 0 };
  const windowed = () => (state.data && state.data.windowed ? window.attnkitWindowed : null);

  function svgEl(name, attrs, parent) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (parent) parent.appendChild(el);
    return el;
  }

  function setStatus(text, kind) {
    const s = $("status");
    s.textContent = text;
    s.dataset.state = kind;
  }

  // ---- data access -------------------------------------------------------------------------
  /** Query-side and key-side tokens of a kind. */
  function axes(kind) {
    const enc = state.data.tokens;
    const dec = state.data.decoder_tokens || enc;
    if (kind === "cross") return { q: dec, k: enc };
    if (kind === "decoder") return { q: dec, k: dec };
    return { q: enc, k: enc };
  }

  /** The (Lq, Lk) matrix on show: one head, or the mean over all heads of the layer. */
  function currentMatrix() {
    const kind = state.data.kinds[$("kind").value];
    const perHead = kind.weights[kind.layers.indexOf(Number($("layer").value))];
    const head = $("head").value;
    if (head !== "all") return perHead[kind.heads.indexOf(Number(head))];
    const n = perHead.length;
    return perHead[0].map((row, q) => row.map((_, k) => {
      let s = 0;
      for (let h = 0; h < n; h++) s += perHead[h][q][k];
      return s / n;
    }));
  }

  function headColor(head) {
    if (head === "all") return MEAN_COLOR;
    const heads = state.data.kinds[$("kind").value].heads;
    const hue = Math.round((heads.indexOf(Number(head)) * 360) / heads.length);
    return `hsl(${hue}, 70%, 42%)`;
  }

  // ---- controls ----------------------------------------------------------------------------
  function fillSelect(select, options) {
    const keep = select.value;
    select.replaceChildren(...options.map(([value, label]) => {
      const o = document.createElement("option");
      o.value = String(value);
      o.textContent = label;
      return o;
    }));
    if (options.some(([v]) => String(v) === keep)) select.value = keep;
  }

  function fillKindControls() {
    const kind = state.data.kinds[$("kind").value];
    fillSelect($("layer"), kind.layers.map((l) => [l, `Layer ${l}`]));
    fillSelect($("head"), [["all", "All heads (mean)"], ...kind.heads.map((h) => [h, `Head ${h}`])]);
  }

  function fillControls() {
    fillSelect($("kind"), Object.keys(state.data.kinds).map((k) => [k, k]));
    fillKindControls();
  }

  // ---- rendering ---------------------------------------------------------------------------
  function render() {
    if (!state.data) return;
    const win = windowed();
    for (const el of document.querySelectorAll(".windowed")) el.hidden = !win;
    if (win) {
      win.render();
      return;
    }
    $("canvas-view").hidden = true;
    const kindName = $("kind").value;
    const { q, k } = axes(kindName);
    const m = currentMatrix();
    const lines = $("view").value === "lines";
    $("lines-view").hidden = !lines;
    $("heatmap-view").hidden = lines;
    $("hover-info").textContent = "";
    if (lines) renderLines(m, q, k);
    else renderHeatmap(m, q, k);
    const head = $("head").value;
    const nHeads = state.data.kinds[kindName].heads.length;
    const notes = (state.data.warnings || []).map((w) => ` · ${w}`).join("");
    setStatus(`${q.length} tokens · ${kindName} · layer ${$("layer").value} · ` +
      (head === "all" ? `mean of ${nHeads} heads` : `head ${head}`) +
      (lines ? " · hover a token to focus its lines" : " · hover a cell for its weight") + notes,
      "ready");
  }

  function labelWidth(tokens) {
    const longest = tokens.reduce((n, t) => Math.max(n, t.length), 1);
    return Math.min(220, Math.max(48, longest * 8 + 12));
  }

  function renderLines(m, qTok, kTok) {
    const svg = $("lines");
    svg.replaceChildren();
    const rowH = Math.max(qTok.length, kTok.length) > 40 ? 16 : 22;
    const left = labelWidth(qTok), gap = 260, top = 14;
    const right = labelWidth(kTok);
    const width = left + gap + right + 8;
    const height = top + rowH * Math.max(qTok.length, kTok.length) + 8;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.dataset.minWeight = String(MIN_WEIGHT);
    const y = (i) => top + rowH * i + rowH / 2;

    const color = headColor($("head").value);
    const g = svgEl("g", { class: "links", stroke: color }, svg);
    m.forEach((row, qi) => row.forEach((w, ki) => {
      if (!(w >= MIN_WEIGHT)) return;
      svgEl("line", {
        x1: left + 6, y1: y(qi), x2: left + gap - 6, y2: y(ki),
        "stroke-opacity": w, "data-q": qi, "data-k": ki, "data-weight": w,
      }, g);
    }));
    const tokens = (list, side, x, anchor) => list.forEach((t, i) => {
      const el = svgEl("text", {
        class: "token", x, y: y(i), "text-anchor": anchor, "dominant-baseline": "central",
        "data-side": side, "data-index": i,
      }, svg);
      el.textContent = t;
    });
    tokens(qTok, "left", left, "end");
    tokens(kTok, "right", left + gap, "start");
  }

  function focusToken(side, index) {
    // Only the token's own lines are touched (an L=256 map has ~65k lines); the CSS rule
    // "#lines.has-focus line:not(.focused)" dims all the others.
    clearFocus();
    const svg = $("lines");
    const attr = side === "left" ? "data-q" : "data-k";
    for (const el of svg.querySelectorAll(`line[${attr}="${index}"], ` +
        `.token[data-side="${side}"][data-index="${index}"]`)) {
      el.classList.add("focused");
    }
    svg.classList.add("has-focus");
    // name the strongest partners
    const { q, k } = axes($("kind").value);
    const m = currentMatrix();
    const pairs = side === "left" ? m[index].map((w, j) => [w, k[j]])
      : m.map((row, i) => [row[index], q[i]]);
    const top = pairs.sort((a, b) => b[0] - a[0]).slice(0, 3)
      .map(([w, t]) => `${t} ${w.toFixed(3)}`).join(", ");
    const tok = (side === "left" ? q : k)[index];
    $("hover-info").textContent = side === "left" ? `“${tok}” attends most to: ${top}`
      : `attending most to “${tok}”: ${top}`;
  }

  function clearFocus() {
    const svg = $("lines");
    svg.classList.remove("has-focus");
    for (const el of svg.querySelectorAll(".focused")) el.classList.remove("focused");
    $("hover-info").textContent = "";
  }

  function cellRGB(w) {
    // white -> deep blue, linear in the weight
    const t = Math.min(1, Math.max(0, w));
    const mix = (a, b) => Math.round(a + (b - a) * t);
    return [mix(247, 8), mix(251, 48), mix(255, 107)];
  }

  function cellColor(w) {
    const [r, g, b] = cellRGB(w);
    return `rgb(${r}, ${g}, ${b})`;
  }

  function renderHeatmap(m, qTok, kTok) {
    const svg = $("heatmap");
    svg.replaceChildren();
    const n = Math.max(qTok.length, kTok.length);
    const cs = Math.max(8, Math.min(30, Math.floor(560 / n)));
    const left = labelWidth(qTok) + 4;
    const top = Math.min(160, labelWidth(kTok) * 0.8 + 8);
    const width = left + cs * kTok.length + 8, height = top + cs * qTok.length + 8;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    const font = Math.min(13, cs - 1);
    qTok.forEach((t, i) => {
      svgEl("text", {
        class: "token", x: left - 4, y: top + cs * i + cs / 2, "text-anchor": "end",
        "dominant-baseline": "central", "font-size": font, "data-side": "left", "data-index": i,
      }, svg).textContent = t;
    });
    kTok.forEach((t, j) => {
      const x = left + cs * j + cs / 2, yy = top - 4;
      svgEl("text", {
        class: "token", x, y: yy, transform: `rotate(-60 ${x} ${yy})`, "font-size": font,
        "dominant-baseline": "central", "data-side": "right", "data-index": j,
      }, svg).textContent = t;
    });
    const g = svgEl("g", { class: "cells" }, svg);
    m.forEach((row, qi) => row.forEach((w, ki) => {
      svgEl("rect", {
        class: "cell", x: left + cs * ki, y: top + cs * qi, width: cs, height: cs,
        fill: cellColor(w), "data-q": qi, "data-k": ki, "data-weight": w,
      }, g);
    }));
  }

  function onHeatmapOver(e) {
    const cell = e.target.closest("rect.cell");
    const svg = $("heatmap");
    for (const el of svg.querySelectorAll(".focused")) el.classList.remove("focused");
    if (!cell) return;
    const qi = Number(cell.dataset.q), ki = Number(cell.dataset.k);
    const { q, k } = axes($("kind").value);
    cell.classList.add("focused");
    svg.querySelector(`.token[data-side="left"][data-index="${qi}"]`).classList.add("focused");
    svg.querySelector(`.token[data-side="right"][data-index="${ki}"]`).classList.add("focused");
    $("hover-info").textContent =
      `“${q[qi]}” (${qi}) → “${k[ki]}” (${ki}): ${Number(cell.dataset.weight).toFixed(4)}`;
  }

  // ---- data sources ------------------------------------------------------------------------
  function setData(data) {
    state.data = data;
    if (window.attnkitWindowed) window.attnkitWindowed.reset();
    fillControls();
    render();
  }

  function describeError(body, status) {
    const d = body && body.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) return d.map((e) => e.msg || JSON.stringify(e)).join("; ");
    return `HTTP ${status}`;
  }

  async function show() {
    const text = $("text").value;
    const body = { text };
    const dec = $("decoder-text");
    if (!dec.hidden && dec.value.trim()) body.decoder_text = dec.value;
    const id = ++state.request;
    setStatus("Computing attention…", "loading");
    try {
      const res = await fetch("api/attention", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      const payload = await res.json().catch(() => null);
      if (id !== state.request) return; // a newer request superseded this one
      if (!res.ok) throw new Error(describeError(payload, res.status));
      setData(payload);
    } catch (err) {
      if (id === state.request) setStatus(`Error: ${err.message}`, "error");
    }
  }

  async function loadInfo() {
    try {
      const res = await fetch("api/info");
      if (!res.ok) return;
      const info = await res.json();
      $("model-info").textContent =
        `${info.family} · ${info.n_layers} layers · ${info.n_heads} heads`;
      $("decoder-text").hidden = !info.kinds.includes("cross");
    } catch (err) {
      setStatus(`Error: cannot reach the server (${err.message})`, "error");
    }
  }

  function init() {
    $("kind").addEventListener("change", () => { fillKindControls(); render(); });
    for (const id of ["layer", "head", "view"]) $(id).addEventListener("change", render);
    const lines = $("lines");
    lines.addEventListener("mouseover", (e) => {
      const t = e.target.closest(".token");
      if (!t) return;
      const win = windowed();
      (win ? win.focus : focusToken)(t.dataset.side, Number(t.dataset.index));
    });
    lines.addEventListener("mouseout", (e) => {
      if (e.target.closest(".token") && !(e.relatedTarget && e.relatedTarget.closest &&
          e.relatedTarget.closest(".token"))) (windowed() || { clearFocus }).clearFocus();
    });
    $("heatmap").addEventListener("mouseover", onHeatmapOver);
    if (window.attnkitWindowed) {
      window.attnkitWindowed.init({ state, $, svgEl, setStatus, cellRGB, headColor });
    }

    const embedded = $("attn-data");
    if (embedded) {
      state.embedded = true;
      const data = JSON.parse(embedded.textContent);
      $("text").value = data.text || data.tokens.join(" ");
      $("text").disabled = true;
      $("show").disabled = true;
      $("embedded-note").hidden = false;
      const m = data.model || {};
      $("model-info").textContent =
        `${m.family || "model"} · ${m.n_layers} layers · ${m.n_heads} heads`;
      setData(data);
      return;
    }
    $("show").addEventListener("click", show);
    $("text").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) show();
    });
    loadInfo();
  }

  window.attnkitExplorer = { state, render };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
