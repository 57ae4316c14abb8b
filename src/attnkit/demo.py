"""``attnkit demo``: run every attention variant on one small input and compare it to the
reference (the ``math`` backend, or the variant's own slow reference for approximations).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from attnkit.attention import attend, backends, explain, masks

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
        ("global + window (Longformer)", masks.global_tokens([0, 1]) | masks.sliding_window(16, 16)),
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
                rows.append(DemoRow(label, name, shape, "math", None, None, str(e).split(": ", 1)[-1]))
                continue
            note = ""
            if name == "auto":
                note = "picked " + explain(q, k, v, mask=mask).backend
            rows.append(DemoRow(label, name, shape, "math", (out - ref).abs().max().item(), ms, note))
    rows.extend(_approximate_rows(q, k, v, shape))
    return rows


def _approximate_rows(q: Tensor, k: Tensor, v: Tensor, shape: str) -> list[DemoRow]:
    """Approximate variants, each against exact softmax attention (how far the approximation
    is) — their exactness against their own references is what the test suite checks."""
    rows: list[DemoRow] = []
    exact = attend(q, k, v, mask=masks.causal(), backend="math")
    out, ms = _time(lambda: attend(q, k, v, mask=masks.causal(), backend="linear"))
    rows.append(DemoRow("linear (elu+1), causal", "linear", shape, "softmax (math)",
                        (out - exact).abs().max().item(), ms, "different kernel: error expected"))
    return rows
