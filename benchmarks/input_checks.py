#!/usr/bin/env python
"""What do attnkit's input checks cost on the hot paths?

Each row times one call with the check and the same call without it, interleaved
(A B A B ..., :func:`_timing.measure_interleaved`), and reports ``ratio = t(without) /
t(with)``: 1.00 = free, 0.95 = the check adds 5 %.

* ``sdpa-guard``: :func:`attnkit.attention.backends.sdpa_backend.sdpa` (what
  ``attend(backend="auto")`` and ``MultiHeadAttention`` call for dense / causal attention: on
  the CPU it sums q and k to detect NaN/inf, which PyTorch's CPU flash kernel would hide) vs
  ``F.scaled_dot_product_attention`` directly; causal, at a training shape (forward, and
  forward + backward) and a decoding step (one query, a cache of keys).
* ``dead-rows``: the sdpa backend with a sliding-window pattern, vs the same kernel call on
  the same (cached) bool mask without the fully-masked-row handling (for a pattern of indices
  it is cached per shape and skipped when no row is dead; ``~mask.any(-1)`` and one
  ``masked_fill`` per call for padding masks and bool tensors).
* ``model``: a ``CausalLM`` (GPT-2 layout at a small width) with every check (token ids, the
  NaN guard of its attention; decoding with a cache checks only each step's new tokens) vs
  the same model with them switched off — a training step (forward + backward) and a cached
  decoding step of one token.

    python benchmarks/input_checks.py                  # default shapes, 1 thread
    python benchmarks/input_checks.py --quick          # smoke run
    python benchmarks/input_checks.py --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402
from attnkit.attention import masks  # noqa: E402
from attnkit.attention import multihead as multihead_module  # noqa: E402
from attnkit.attention.backends import sdpa_backend  # noqa: E402
from attnkit.attention.backends.common import dense_mask  # noqa: E402
from attnkit.models import CausalLM, CausalLMConfig  # noqa: E402
from attnkit.models import causal_lm as causal_lm_module  # noqa: E402


@dataclass
class Row:
    case: str
    shape: str
    without_ms: float | None = None
    with_ms: float | None = None
    ratio: float | None = None
    status: str = "ok"


def _pair(cfg, with_check, without_check) -> tuple[float, float]:
    t_with, t_without = _timing.measure_interleaved(
        [with_check, without_check], warmup=cfg.warmup, repeats=cfg.repeats,
        min_sample_s=0.01)
    return t_without.median_s, t_with.median_s


def _row(cfg, case: str, shape: str, with_check, without_check) -> Row:
    without, with_ = _pair(cfg, with_check, without_check)
    return Row(case, shape, without * 1e3, with_ * 1e3, without / with_)


def sdpa_rows(cfg) -> list[Row]:
    B, H, L, D = cfg.batch, cfg.heads, cfg.seq_len, cfg.head_dim
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(3))
    scale = D ** -0.5
    rows = [_row(cfg, "sdpa-guard fwd", f"B{B} H{H} L{L} D{D} causal",
                 lambda: sdpa_backend.sdpa(q, k, v, is_causal=True, scale=scale),
                 lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale))]
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def fwdbwd(fn):
        def step():
            for t in (qg, kg, vg):
                t.grad = None
            fn(qg, kg, vg, is_causal=True, scale=scale).sum().backward()
        return step

    rows.append(_row(cfg, "sdpa-guard fwd+bwd", f"B{B} H{H} L{L} D{D} causal",
                     fwdbwd(sdpa_backend.sdpa),
                     fwdbwd(F.scaled_dot_product_attention)))
    q1 = q[:1, :, -1:].contiguous()
    k1, v1 = k[:1].contiguous(), v[:1].contiguous()
    rows.append(_row(cfg, "sdpa-guard decode", f"B1 H{H} Lq1 Lk{L} D{D}",
                     lambda: sdpa_backend.sdpa(q1, k1, v1, scale=scale),
                     lambda: F.scaled_dot_product_attention(q1, k1, v1, scale=scale)))

    window = masks.sliding_window(cfg.window - 1, 0)
    allowed = dense_mask(window, B, H, L, L, q.device)  # cached on the mask: built once

    def without_fill():  # the same kernel call (NaN guard included), no fill
        return sdpa_backend.sdpa(q, k, v, attn_mask=allowed, scale=scale)

    def with_fill():
        return sdpa_backend.forward(q, k, v, mask=window, score_mod=None, scale=scale,
                                    dropout_p=0.0, return_weights=False)[0]

    assert torch.allclose(with_fill(), without_fill(), atol=1e-5)
    rows.append(_row(cfg, "dead-rows fwd", f"B{B} H{H} L{L} D{D} window {cfg.window}",
                     with_fill, without_fill))
    return rows


def _checks_off():
    """Switch every input check of this module's hot paths off: the token-id check of
    ``CausalLM`` and the CPU NaN guard of attention (sdpa backend, ``MultiHeadAttention``)."""
    saved = (causal_lm_module.host_check_is_free, multihead_module.on_cpu_eager,
             sdpa_backend.on_cpu_eager)
    causal_lm_module.host_check_is_free = lambda *a, **k: False
    multihead_module.on_cpu_eager = sdpa_backend.on_cpu_eager = lambda t: False

    def restore():
        (causal_lm_module.host_check_is_free, multihead_module.on_cpu_eager,
         sdpa_backend.on_cpu_eager) = saved
    return restore


def model_rows(cfg) -> list[Row]:
    mc = CausalLMConfig(vocab_size=cfg.vocab, max_seq_len=cfg.seq_len + 8, d_model=cfg.d_model,
                        n_layers=cfg.layers, n_heads=cfg.heads)
    torch.manual_seed(0)
    model = CausalLM(mc)
    ids = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq_len))

    def unchecked(fn):
        def call():
            restore = _checks_off()
            try:
                return fn()
            finally:
                restore()
        return call

    def train_step():
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()

    model.train()
    shape = f"{cfg.layers}x d{cfg.d_model} V{cfg.vocab}, B{cfg.batch} L{cfg.seq_len}"
    rows = [_row(cfg, "model train step", shape, train_step, unchecked(train_step))]
    model.eval()
    caches = model.new_caches(1, cfg.seq_len + 8)
    with torch.no_grad():
        model(ids[:1], caches=caches)  # prefill
    one = ids[:1, :1]
    pos = caches[0].pos

    def decode_step():
        for c in caches:  # every call decodes the same position
            c.pos = pos
        with torch.no_grad():
            return model(one, caches=caches).logits

    rows.append(_row(cfg, "model decode step", f"{shape.split(',')[0]}, B1 cache {pos}",
                     decode_step, unchecked(decode_step)))
    return rows


def run(cfg) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    rows, interrupted = [], False
    try:
        for part in (sdpa_rows, model_rows):
            rows += part(cfg)
            print(f"done: {part.__name__}", file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
    meta = {"command": cfg.command, "torch": torch.__version__, "threads": cfg.threads,
            "device": _timing.device_desc(torch.device("cpu")), "loadavg": _timing.loadavg(),
            "total_s": time.perf_counter() - t0, "interrupted": interrupted}
    return {"meta": meta, "rows": rows}


def render(result: dict[str, Any]) -> str:
    m = result["meta"]
    lines = [f"torch {m['torch']}, {m['device']}, {m['threads']} thread(s), fp32; load average "
             f"at the end {m['loadavg']}",
             f"command: `{m['command']}`", "",
             "| case | shape | without check (ms) | with check (ms) | ratio without/with |",
             "| --- | --- | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r.case} | {r.shape} | {_timing.fmt_ms(r.without_ms / 1e3)} | "
                     f"{_timing.fmt_ms(r.with_ms / 1e3)} | {r.ratio:.3f} |")
    lines += ["", "ratio = t(without) / t(with): 1.00 = the check is free; the two are timed "
              "interleaved in the same run.", _timing.total_line(m)]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny shapes, few repeats")
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    def go(cfg):
        if cfg.quick:
            cfg.batch, cfg.heads, cfg.seq_len, cfg.window = 2, 2, 64, 16
            cfg.layers, cfg.d_model, cfg.vocab, cfg.repeats, cfg.warmup = 1, 32, 128, 3, 1
        return run(cfg)

    return _timing.run_script(argv, "benchmarks/input_checks.py", parser(), go, render)


if __name__ == "__main__":
    sys.exit(main())
