"""Analyses of attention maps: pure functions on tensors (no model, no plotting).

Shapes: ``A`` is a map ``(..., Lq, Lk)`` whose rows are distributions (``Σ_k A[q, k] = 1``);
a capture's kind gives ``(layers, heads, Lq, Lk)``.

* :func:`rollout`, :func:`attention_flow` — Abnar & Zuidema 2020, "Quantifying Attention Flow
  in Transformers" (ACL). Both add the residual connection to each layer's head-averaged map,
  ``Ã_l = rownorm(0.5·A_l + 0.5·I)``, and follow the information from the input tokens to
  the last layer: rollout multiplies, ``R = Ã_n ··· Ã_2 Ã_1``; flow solves a max-flow problem
  on the layered graph with ``Ã_l`` as edge capacities.
* :func:`entropy` — ``H = mean_q −Σ_k A[q,k] log A[q,k]`` (nats): ``log Lk`` for uniform
  attention, 0 for one-hot (Clark et al. 2019, "What Does BERT Look At?").
* :func:`mean_distance` — ``mean_q Σ_k A[q,k] |q − k|`` (or a distance between token
  coordinates, e.g. patch positions: ViT's "mean attention distance", Dosovitskiy et al. 2021).
* :func:`top_attended` — the ``k`` keys each query attends to most, as JSON-friendly dicts.
* :func:`head_similarity` — ``(N, N)`` similarity of the ``N = layers·heads`` maps: ``1 − JSD /
  log 2`` averaged over queries (Jensen–Shannon, in [0, 1]) or the cosine of the flattened maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["fuse_heads", "residual_attention", "rollout", "attention_flow", "max_flow",
           "entropy", "mean_distance", "top_attended", "head_similarity", "head_stats",
           "FLOW_MAX_TOKENS"]

FLOW_MAX_TOKENS = 64
_EPS = 1e-12


def fuse_heads(weights: Tensor, head_fusion: str = "mean") -> Tensor:
    """``(layers, heads, L, L) -> (layers, L, L)`` by ``mean``/``max``/``min`` over heads;
    a ``(layers, L, L)`` input is returned as is."""
    if weights.dim() == 3:
        return weights
    if weights.dim() != 4:
        raise ValueError(f"expected (layers, heads, L, L) or (layers, L, L), got "
                         f"{tuple(weights.shape)}")
    if head_fusion == "mean":
        return weights.mean(1)
    if head_fusion == "max":
        return weights.amax(1)
    if head_fusion == "min":
        return weights.amin(1)
    raise ValueError(f"unknown head_fusion {head_fusion!r}; valid: 'mean', 'max', 'min'")


def residual_attention(weights: Tensor, residual: float = 0.5, head_fusion: str = "mean"
                       ) -> Tensor:
    """``Ã_l = rownorm((1 − r)·A_l + r·I)`` in float64, ``(layers, L, L)``; ``r = 0.5`` is
    Abnar & Zuidema's choice (the residual stream carries as much as attention)."""
    a = fuse_heads(weights, head_fusion).double()
    if a.shape[-1] != a.shape[-2]:
        raise ValueError(f"self-attention maps must be square, got {tuple(a.shape)}")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    a = (1.0 - residual) * a + residual * eye
    return a / a.sum(-1, keepdim=True).clamp(min=_EPS)


def rollout(weights: Tensor, *, residual: float = 0.5, head_fusion: str = "mean",
            return_all: bool = False) -> Tensor:
    """Attention rollout: ``R_1 = Ã_1``, ``R_l = Ã_l R_{l−1}``; ``R_n[i, j]`` is how much
    input token ``j`` contributes to position ``i`` after the last layer (rows sum to 1).

    ``weights``: ``(layers, heads, L, L)`` (or head-fused ``(layers, L, L)``) of *all* layers,
    first to last. Returns ``(L, L)``, or ``(layers, L, L)`` (every ``R_l``) with
    ``return_all``, in the input's dtype.
    """
    a = residual_attention(weights, residual, head_fusion)
    out = []
    r = a[0]
    out.append(r)
    for layer in a[1:]:
        r = layer @ r
        out.append(r)
    res = torch.stack(out) if return_all else r
    return res.to(weights.dtype)


_Graph = tuple[int, list[list[int]], list[int], list[float], list[int]]


def _layered_graph(capacities: Sequence[Tensor]) -> _Graph:
    """Residual edge lists of the layered graph: edge ``e`` and its reverse ``e ^ 1``.
    Returns ``(n_nodes, adj, to, capacity, layer offsets)``."""
    sizes = [capacities[0].shape[1]] + [c.shape[0] for c in capacities]
    offs = [0]
    for n in sizes:
        offs.append(offs[-1] + n)
    adj: list[list[int]] = [[] for _ in range(offs[-1])]
    to: list[int] = []
    cap: list[float] = []
    for layer, c in enumerate(capacities):
        for i, row in enumerate(c.tolist()):
            v = offs[layer + 1] + i
            for j, x in enumerate(row):
                if x > _EPS:
                    u = offs[layer] + j
                    adj[u].append(len(to))
                    to.append(v)
                    cap.append(float(x))
                    adj[v].append(len(to))
                    to.append(u)
                    cap.append(0.0)
    return offs[-1], adj, to, cap, offs


def _dinic(nv: int, adj: list[list[int]], to: list[int], cap: list[float], s: int, t: int
           ) -> float:
    """Dinic's max-flow on residual edge lists; ``cap`` is consumed (updated in place)."""
    total = 0.0
    while True:
        level = [-1] * nv
        level[s] = 0
        queue = [s]
        for u in queue:  # BFS: the list grows while we walk it
            nxt = level[u] + 1
            for e in adj[u]:
                v = to[e]
                if level[v] < 0 and cap[e] > _EPS:
                    level[v] = nxt
                    queue.append(v)
        if level[t] < 0:
            return total
        it = [0] * nv
        while True:  # blocking flow: augmenting paths in the level graph
            path: list[int] = []
            u = s
            while u != t:
                edges, i, want = adj[u], it[u], level[u] + 1
                while i < len(edges) and not (cap[edges[i]] > _EPS
                                              and level[to[edges[i]]] == want):
                    i += 1
                it[u] = i
                if i < len(edges):
                    path.append(edges[i])
                    u = to[edges[i]]
                    continue
                level[u] = -1  # dead end: never enter u again in this phase
                if not path:
                    break
                u = to[path.pop() ^ 1]  # back to the tail, past the dead edge
                it[u] += 1
            if u != t:
                break
            b = min(cap[e] for e in path)
            for e in path:
                cap[e] -= b
                cap[e ^ 1] += b
            total += b


def max_flow(capacities: Sequence[Tensor], source: int, sink: int) -> float:
    """Maximum flow from node ``(0, source)`` to ``(n, sink)`` of a layered graph with layers
    ``0..n``; ``capacities[l][i, j]`` is the capacity of the edge ``(l, j) → (l + 1, i)``.

    Dinic's algorithm (BFS level graph, then a blocking flow by DFS with current-arc
    pointers; O(V²E)) in pure Python over residual edge lists.
    """
    nv, adj, to, cap, offs = _layered_graph(capacities)
    return _dinic(nv, adj, to, cap, offs[0] + source, offs[-2] + sink)


def attention_flow(weights: Tensor, *, outputs: int | Sequence[int] | None = None,
                   residual: float = 0.5, head_fusion: str = "mean", normalize: bool = True,
                   max_tokens: int = FLOW_MAX_TOKENS) -> Tensor:
    """Attention flow: ``F[i, j]`` = max-flow from input token ``j`` (layer 0) to position
    ``i`` after the last layer, capacities ``Ã_l`` (see :func:`residual_attention`).

    ``weights``: ``(layers, heads, L, L)`` or ``(layers, L, L)``. ``outputs``: the rows to
    compute (default all ``L``); each row costs ``L`` max-flow problems on a graph of
    ``(layers + 1)·L`` nodes and ``layers·L²`` edges (pure-Python Dinic, :func:`max_flow`).
    Measured on one CPU core: ~0.04 s per row at L = 16 and ~1 s per row at L = 64, 12 layers
    (all 64 rows: about a minute) — ask for the rows you show. ``L > max_tokens`` (default 64)
    is refused; use :func:`rollout` for long inputs.
    ``normalize`` divides each row by its sum, as Abnar & Zuidema's reference code does.
    Returns ``(len(outputs), L)`` (``(L,)`` for an int ``outputs``) in the input's dtype.
    """
    a = residual_attention(weights, residual, head_fusion)
    L = a.shape[-1]
    if L > max_tokens:
        raise ValueError(f"attention_flow on {L} tokens: over max_tokens={max_tokens} (the "
                         f"pure-Python max-flow solves L² problems of layers·L² edges); use "
                         f"rollout(), fewer tokens, or raise max_tokens")
    single = isinstance(outputs, int)
    rows = ([outputs] if single else list(range(L)) if outputs is None else list(outputs))
    nv, adj, to, cap, offs = _layered_graph(list(a.cpu()))
    res = torch.zeros(len(rows), L, dtype=torch.float64)
    for r, i in enumerate(rows):
        if not -L <= i < L:
            raise ValueError(f"output {i} out of range for {L} tokens")
        for j in range(L):
            res[r, j] = _dinic(nv, adj, to, list(cap), offs[0] + j, offs[-2] + i % L)
    if normalize:
        res = res / res.sum(-1, keepdim=True).clamp(min=_EPS)
    res = res.to(weights.dtype)
    return res[0] if single else res


def entropy(weights: Tensor) -> Tensor:
    """``(..., Lq, Lk) -> (...)``: mean over queries of ``−Σ_k p log p`` (nats; 0·log 0 = 0).
    Uniform rows over ``n`` keys give ``log n``."""
    p = weights.double()
    h = -torch.special.xlogy(p, p).sum(-1)
    return h.mean(-1).to(weights.dtype)


def mean_distance(weights: Tensor, coords: Tensor | None = None) -> Tensor:
    """``(..., L, L) -> (...)``: ``mean_q Σ_k A[q, k]·d(q, k)`` with ``d = |q − k|`` (token
    positions) or ``‖coords[q] − coords[k]‖`` for ``coords (L, dims)`` (e.g. patch
    centres). Self-attention only: the maps must be square."""
    Lq, Lk = weights.shape[-2:]
    if Lq != Lk:
        raise ValueError(f"mean_distance needs square self-attention maps, got {Lq}×{Lk}")
    if coords is None:
        pos = torch.arange(Lq, dtype=torch.float64, device=weights.device)
        d = (pos[:, None] - pos[None, :]).abs()
    else:
        c = coords.double().to(weights.device)
        c = c[:, None] if c.dim() == 1 else c
        d = torch.cdist(c, c)
    return (weights.double() * d).sum(-1).mean(-1).to(weights.dtype)


def top_attended(weights: Tensor, tokens: Sequence[str], k: int = 1,
                 query_tokens: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """For one head's map ``(Lq, Lk)``: per query, the ``k`` most attended keys::

        [{"query": 0, "query_token": "the", "top": [{"index": 3, "token": "cat",
          "weight": 0.71}, ...]}, ...]

    ``tokens`` label the keys, ``query_tokens`` the queries (default ``tokens``)."""
    if weights.dim() != 2:
        raise ValueError(f"expected one (Lq, Lk) map, got {tuple(weights.shape)}")
    Lq, Lk = weights.shape
    q_tokens = tokens if query_tokens is None else query_tokens
    if len(tokens) != Lk or len(q_tokens) != Lq:
        raise ValueError(f"{len(q_tokens)} query / {len(tokens)} key tokens for a {Lq}×{Lk} map")
    vals, idx = weights.float().topk(min(k, Lk), dim=-1)
    return [{"query": q, "query_token": q_tokens[q],
             "top": [{"index": j, "token": tokens[j], "weight": round(v, 4)}
                     for v, j in zip(vals[q].tolist(), idx[q].tolist(), strict=True)]}
            for q in range(Lq)]


def head_similarity(weights: Tensor, metric: str = "js") -> Tensor:
    """Pairwise similarity of heads: ``(layers, heads, Lq, Lk)`` or ``(N, Lq, Lk)`` ->
    ``(N, N)``, ``N = layers·heads`` in layer-major order (index ``l·heads + h``).

    ``js``: ``1 − mean_q JSD(A_a[q], A_b[q]) / log 2`` with ``JSD(P, Q) = ½KL(P‖M) + ½KL(Q‖M)``,
    ``M = ½(P + Q)`` — 1 for identical maps, 0 for disjoint supports. ``cosine``: cosine of the
    flattened maps."""
    w = weights.reshape(-1, *weights.shape[-2:]).double()
    if metric == "cosine":
        f = torch.nn.functional.normalize(w.flatten(1), dim=1)
        return (f @ f.T).to(weights.dtype)
    if metric != "js":
        raise ValueError(f"unknown metric {metric!r}; valid: 'js', 'cosine'")
    p, q = w[:, None], w[None, :]  # (N, 1, Lq, Lk), (1, N, Lq, Lk)
    m = 0.5 * (p + q)
    kl_pm = (torch.special.xlogy(p, p) - torch.special.xlogy(p, m)).sum(-1)
    kl_qm = (torch.special.xlogy(q, q) - torch.special.xlogy(q, m)).sum(-1)
    jsd = (0.5 * (kl_pm + kl_qm)).mean(-1)  # (N, N)
    return (1.0 - jsd / math.log(2)).clamp(0.0, 1.0).to(weights.dtype)


def head_stats(weights: Tensor) -> dict[str, Tensor]:
    """``{"entropy", "distance"}``, each ``(layers, heads)``, for ``(layers, heads, L, L)``
    self-attention maps (distance is omitted for non-square cross-attention maps)."""
    out = {"entropy": entropy(weights)}
    if weights.shape[-1] == weights.shape[-2]:
        out["distance"] = mean_distance(weights)
    return out
