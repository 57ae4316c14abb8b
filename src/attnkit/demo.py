"""``attnkit demo``: run every attention variant on one small input and compare it to the
reference (the ``math`` backend, or the variant's own slow reference for approximations).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.functional import normalize

from attnkit.attention import attend, backends, explain, masks
from attnkit.attention.backends.common import repeat_kv
from attnkit.attention.hierarchical import hierarchical_attention, hierarchical_attention_reference
from attnkit.attention.linear import (
    EluFeatureMap,
    FavorFeatureMap,
    linear_attention,
    linear_attention_reference,
)
from attnkit.attention.lsh import lsh_attention, lsh_attention_reference
from attnkit.attention.scoring import AdditiveAttention, CosineAttention

__all__ = ["DemoRow", "run_demo"]


@dataclass
class DemoRow:
    variant: str
    backend: str
    shape: str
    reference: str
    max_err: float | None
    ms: float | None
    note: str = ""


def _time(fn: Callable[[], Tensor], repeats: int = 3) -> tuple[Tensor, float]:
    out = fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return out, (time.perf_counter() - t0) / repeats * 1e3


def _patterns(n: int, batch: int) -> list[tuple[str, masks.Mask | None]]:
    lengths = [n] * batch
    lengths[-1] = n // 2
    return [
        ("dense", None),
        ("causal", masks.causal()),
        ("padding", masks.padding(lengths)),
        ("sliding window (32, 0)", masks.sliding_window(32, 0)),
        ("dilated window", masks.dilated_window(16, 16, dilation=2)),
        ("strided (Sparse T.)", masks.strided(16)),
        ("fixed (Sparse T.)", masks.fixed(32, 4)),
        ("global + window (Longformer)",
         masks.global_tokens([0, 1]) | masks.sliding_window(16, 16)),
        ("BigBird", masks.bigbird(32, num_blocks=-(-n // 32), seed=0)),
        ("block-local", masks.block_local(64)),
    ]


def run_demo(seq_len: int = 256, batch: int = 2, heads: int = 8, kv_heads: int = 2,
             head_dim: int = 64, device: str = "cpu", seed: int = 0) -> list[DemoRow]:
    """Every exact backend on every pattern, then the approximate variants."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_len, head_dim, generator=g).to(device)
    k = torch.randn(batch, kv_heads, seq_len, head_dim, generator=g).to(device)
    v = torch.randn(batch, kv_heads, seq_len, head_dim, generator=g).to(device)
    shape = f"q{tuple(q.shape)} kv{tuple(k.shape)}"
    rows: list[DemoRow] = []
    for label, mask in _patterns(seq_len, batch):
        ref = attend(q, k, v, mask=mask, backend="math")
        for name in ("auto",) + backends.EXACT:
            try:
                out, ms = _time(lambda: attend(q, k, v, mask=mask, backend=name))  # noqa: B023
            except ValueError as e:  # backend cannot serve this input: say why
                reason = str(e).split(": ", 1)[-1]
                rows.append(DemoRow(label, name, shape, "math", None, None, reason))
                continue
            note = ""
            if name == "auto":
                note = "picked " + explain(q, k, v, mask=mask).backend
            err = (out - ref).abs().max().item()
            rows.append(DemoRow(label, name, shape, "math", err, ms, note))
    rows.extend(_approximate_rows(q, k, v, shape))
    return rows


def _approximate_rows(q: Tensor, k: Tensor, v: Tensor, shape: str) -> list[DemoRow]:
    """Approximate variants and the other scoring functions, each against its own slow
    reference; the note says how far the approximation lands from exact softmax attention."""
    rows: list[DemoRow] = []
    n_rep = q.shape[1] // k.shape[1]
    kk, vv = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    causal = masks.causal()
    exact_causal = attend(q, k, v, mask=causal, backend="math")
    exact = attend(q, k, v, backend="math")

    def row(label, fn, ref, exact_out, reference="own reference"):
        out, ms = _time(fn)
        note = "" if exact_out is None else \
            f"vs exact softmax: {(out - exact_out).abs().max().item():.2f}"
        rows.append(DemoRow(label, "module", shape, reference,
                            (out - ref()).abs().max().item(), ms, note))

    elu, favor = EluFeatureMap(), FavorFeatureMap(q.shape[-1], num_features=256, seed=0)
    for name, fm in (("elu+1", elu), ("FAVOR+ (m=256)", favor)):
        row(f"linear {name}, causal",
            lambda fm=fm: linear_attention(q, k, v, feature_map=fm, causal=True),
            lambda fm=fm: linear_attention_reference(q, k, v, feature_map=fm, causal=True),
            exact_causal)
    row("hierarchical (block 32), causal",
        lambda: hierarchical_attention(q, kk, vv, block=32, causal=True),
        lambda: hierarchical_attention_reference(q, kk, vv, block=32, causal=True),
        exact_causal)
    qk = normalize(q, dim=-1) * q.shape[-1] ** 0.25
    row("LSH (Reformer, 8 buckets, 2 hashes)",
        lambda: lsh_attention(qk, vv, n_buckets=8, n_hashes=2, chunk_size=32, seed=0),
        lambda: lsh_attention_reference(qk, vv, n_buckets=8, n_hashes=2, chunk_size=32, seed=0),
        None)
    cos = CosineAttention()
    row("cosine scoring (τ=10)", lambda: cos(q, k, v, backend="sdpa"),
        lambda: cos(q, k, v, backend="math"), None, reference="math backend")
    add = AdditiveAttention(q.shape[-1], 32)
    with torch.no_grad():
        row("additive (Bahdanau)", lambda: add(q, kk, vv),
            lambda: add(q, kk, vv, chunk_size=16), None, reference="query-chunked")
    del exact
    return rows
