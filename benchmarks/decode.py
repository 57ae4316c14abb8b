#!/usr/bin/env python
"""Benchmark KV-cache decoding: attnkit's ``generate`` against Hugging Face ``transformers``
``generate(do_sample=False)`` on GPT-2-small shapes, the same weights, identical tokens.

Variants, sampled round-robin in the same run (A B C, B C A, ...):

* ``hf`` (the baseline) — ``GPT2LMHeadModel.generate(do_sample=False)``, its default
  dynamic cache, ``attn_implementation="sdpa"``; ``hf-static`` — the same with
  ``cache_implementation="static"`` (HF's preallocated cache).
* ``attnkit`` — :func:`attnkit.generate.generate` greedy: the
  :class:`~attnkit.decoding.StaticDecoder` (fixed-shape steps over preallocated K/V);
  ``attnkit-compile`` — the same step under ``torch.compile`` (``GenerationConfig(
  compile=True)``; compiled once in the warm-up); ``attnkit-dynamic`` — the model's own
  forward with its growing caches (``static_cache=False``).
* ``floor`` — not a decoder: per token, the matrix products of the step alone — every weight
  matrix of the model (the four per layer and the LM head) times ``batch`` rows, computed as
  the StaticDecoder computes them (``F.linear``, or MKL's packed GEMM from 4 rows on) —
  nothing else. Any fp32 implementation has to read these weights once per step, so this is
  the lower bound of the step time with these kernels, measured in the same run.

The attnkit model holds the HF model's weights (saved as a Hugging Face directory, loaded with
``load_gpt2``) and every variant's tokens are checked equal to HF's before timing.

Decode tokens/s = batch × (new − 1) / (t(new tokens) − t(1 token)): each generation is timed
with ``--new-tokens`` and with 1 new token (prefill + first token), so the prompt's cost
cancels. The report adds the bytes of weights read per step, the DRAM bandwidth measured by
summing a 512 MiB fp32 tensor, and the step-time floor they imply.

    python benchmarks/decode.py                        # batch 1 and 8, 2 threads
    python benchmarks/decode.py --batches 1 --new-tokens 32 --rounds 2
    python benchmarks/decode.py --quick                # smoke run (2 layers)
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _peers  # noqa: E402
import _timing  # noqa: E402

SHAPE = dict(layers=12, d_model=768, heads=12, vocab=50257, seq_len=1024)
QUICK = dict(layers=2)
VARIANTS = ("hf", "hf-static", "attnkit", "attnkit-compile", "attnkit-dynamic", "floor")
DEFAULT_VARIANTS = ("hf", "hf-static", "attnkit", "attnkit-compile", "attnkit-dynamic",
                    "floor")
BASELINE = "hf"
TARGET = 1.5  # the batch-1 target, tokens/s vs HF generate


@dataclass
class Row:
    batch: int
    variant: str
    what: str
    same_tokens: bool | None = None
    ms_per_step: float | None = None  # decode: (t(N) - t(1)) / (N - 1)
    tokens_per_s: float | None = None
    speedup: float | None = None  # tokens/s vs the baseline
    round_speedups: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    first_ms: list[float] = field(default_factory=list)
    status: str = "ok"
    reason: str = ""


# ---- models and variants --------------------------------------------------------------------


def build_models(cfg, tmp: str):
    s = dict(SHAPE, **(QUICK if cfg.quick else {}))
    for k in s:
        v = getattr(cfg, k, None)
        if v is not None:
            s[k] = v
    hf = _peers.hf_gpt2(dict(s, batch=1), cfg.seed, "gelu_tanh").eval()
    ak = _peers.attnkit_twin(hf, _peers.scratch_dir(tmp, "gpt2")).eval()
    return s, hf, ak


def make_variant(name: str, hf, ak, ids: torch.Tensor) -> tuple[Callable[[int], Any], str]:
    """``run(n) -> tokens (list of lists)`` generating ``n`` new tokens, and a description."""
    from attnkit.generate import generate
    from attnkit.sampling import GenerationConfig

    P = ids.shape[1]
    am = torch.ones_like(ids)
    if name in ("hf", "hf-static"):
        extra = {"cache_implementation": "static"} if name == "hf-static" else {}

        def run(n: int):
            out = hf.generate(ids, attention_mask=am, do_sample=False, max_new_tokens=n,
                              min_new_tokens=n, pad_token_id=0, **extra)
            return out[:, P:].tolist()

        return run, "GPT2LMHeadModel.generate(do_sample=False" + (
            ", cache_implementation='static')" if extra else ")")
    if name.startswith("attnkit"):
        kw = {"attnkit": {}, "attnkit-compile": {"compile": True},
              "attnkit-dynamic": {"static_cache": False}}[name]

        def run(n: int):
            return generate(ak, ids, GenerationConfig(max_new_tokens=n, **kw))

        return run, "generate(), " + {
            "attnkit": "StaticDecoder, eager", "attnkit-compile": "StaticDecoder, compile=True",
            "attnkit-dynamic": "static_cache=False (model forward + growing caches)"}[name]
    if name == "floor":
        from attnkit.decoding import PACK_MIN_ROWS, _can_pack, _pack

        weights = []
        for layer in ak.stack.layers:
            weights += [layer.attn.qkv, layer.attn.out_proj, layer.ffn.w1, layer.ffn.w2]
        weights.append(ak.lm_head)
        B = ids.shape[0]
        packed = _pack(ak, B) if B >= PACK_MIN_ROWS and _can_pack(ak) else {}
        xs = [torch.randn(B, m.in_features) for m in weights]

        def run(n: int):
            for _ in range(n):
                for x, m in zip(xs, weights, strict=True):
                    if m in packed:
                        torch.ops.mkl._mkl_linear(x, packed[m], m.weight, m.bias, B)
                    else:
                        F.linear(x, m.weight, m.bias)
            return None

        return run, ("the step's matrix products alone: every weight once per step ("
                     + ("MKL packed GEMM, as StaticDecoder" if packed else "F.linear") + ")")
    raise ValueError(name)


def dram_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """GB/s of ``x.sum()`` over a ``mib`` MiB fp32 tensor (best of ``repeats``)."""
    x = torch.ones(mib * 2**20 // 4)
    x.sum()
    best = min(_time(lambda: x.sum()) for _ in range(repeats))
    return x.numel() * 4 / best / 1e9


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---- running --------------------------------------------------------------------------------


def run_batch(B: int, cfg, hf, ak, s: dict, log) -> list[Row]:
    g = torch.Generator().manual_seed(cfg.seed + B)
    ids = torch.randint(0, s["vocab"], (B, cfg.prompt_len), generator=g)
    N = cfg.new_tokens
    rows, runs = [], []
    want = None
    for name in cfg.variant_list:
        row = Row(B, name, "")
        try:
            run, row.what = make_variant(name, hf, ak, ids)
            t0 = time.perf_counter()
            got = run(N)  # warm-up (compiles attnkit-compile) and the token check
            log(f"[batch {B}] {name}: warm-up {time.perf_counter() - t0:.1f} s")
            if got is not None:
                if want is None:
                    want = got
                row.same_tokens = got == want
                if not row.same_tokens:
                    log(f"[batch {B}] {name}: TOKENS DIFFER from {cfg.variant_list[0]}")
            run(1)
            runs.append(run)
            rows.append(row)
        except Exception as e:  # report and go on
            row.status, row.reason = "error", f"{type(e).__name__}: {e}"
            log(f"[batch {B}] {name}: ERROR {row.reason}")
            rows.append(row)
    ok = [r for r in rows if r.status == "ok"]
    for rnd in range(cfg.rounds):
        for j in range(len(runs)):
            i = (rnd + j) % len(runs)
            ok[i].total_ms.append(_time(lambda i=i: runs[i](N)) * 1e3)
            ok[i].first_ms.append(_time(lambda i=i: runs[i](1)) * 1e3)
    for r in ok:
        steps = [max(t - f, 1e-6) / (N - 1) for t, f in zip(r.total_ms, r.first_ms, strict=True)]
        r.ms_per_step = statistics.median(steps)
        r.tokens_per_s = B * 1e3 / r.ms_per_step
        r._steps = steps  # type: ignore[attr-defined]
    base = next((r for r in ok if r.variant == BASELINE), None)
    for r in ok:
        if base is not None:
            r.speedup = r.tokens_per_s / base.tokens_per_s
            r.round_speedups = [round(b / a, 3) for a, b in zip(r._steps, base._steps,
                                                                 strict=True)]
        log(f"[batch {B}] {r.variant}: {r.ms_per_step:.1f} ms/step, {r.tokens_per_s:.1f} "
            f"tok/s" + (f", x{r.speedup:.2f} vs {BASELINE}" if r.speedup else ""))
    for r in ok:
        del r._steps
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--quick", action="store_true", help="smoke run: 2 layers")
    a("--variants", default=",".join(DEFAULT_VARIANTS),
      help=f"comma list of {','.join(VARIANTS)} (default: all)")
    a("--batches", default="1,8", help="comma list of batch sizes (default: %(default)s)")
    a("--prompt-len", type=int, default=32, help="prompt tokens (default: %(default)s)")
    a("--new-tokens", type=int, default=64, help="generated tokens (default: %(default)s)")
    a("--rounds", type=int, default=3, help="timed rounds (default: %(default)s)")
    for k, default in SHAPE.items():
        a("--" + k.replace("_", "-"), dest=k, type=int, default=None,
          help=f"model {k} (default {default})")
    a("--threads", type=int, default=2, help="torch.set_num_threads (default: %(default)s)")
    a("--seed", type=int, default=0)
    a("--json", metavar="PATH", default=None, help="also write results as JSON")
    return p


def run_benchmarks(cfg: argparse.Namespace, log: Callable[[str], None] | None = None) -> dict:
    if log is None:
        def log(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)
    cfg.variant_list = [v.strip() for v in cfg.variants.split(",") if v.strip()]
    bad = [v for v in cfg.variant_list if v not in VARIANTS]
    if bad or cfg.new_tokens < 2:
        raise SystemExit(f"error: unknown variants {bad} (valid: {VARIANTS}) or --new-tokens < 2")
    batches = [int(b) for b in cfg.batches.split(",")]
    old = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    meta: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(),
        "device": _timing.device_desc(torch.device("cpu")), "threads": cfg.threads,
        "cpu_count": os.cpu_count(), "loadavg_at_start": _timing.loadavg(),
        "command": cfg.command, "prompt_len": cfg.prompt_len, "new_tokens": cfg.new_tokens,
        "rounds": cfg.rounds, "baseline": BASELINE, "interrupted": False,
    }
    rows: list[Row] = []
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="attnkit-bench-decode-") as tmp, \
                torch.no_grad():
            s, hf, ak = build_models(cfg, tmp)
            lin = [m for m in ak.modules() if isinstance(m, torch.nn.Linear)]
            meta["shape"] = s
            meta["weight_bytes"] = sum(m.weight.numel() * m.weight.element_size()
                                       + (m.bias.numel() * 4 if m.bias is not None else 0)
                                       for m in lin)
            meta["dram_gb_s"] = dram_bandwidth()
            log(f"{s}: {meta['weight_bytes'] / 1e6:.0f} MB of weights per step; DRAM "
                f"{meta['dram_gb_s']:.1f} GB/s")
            for B in batches:
                rows += run_batch(B, cfg, hf, ak, s, log)
                gc.collect()
    except KeyboardInterrupt:
        meta["interrupted"] = True
    finally:
        torch.set_num_threads(old)
    meta["loadavg_at_end"] = _timing.loadavg()
    meta["total_s"] = round(time.perf_counter() - t0, 1)
    return {"meta": meta, "rows": rows}


def render(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    s = meta.get("shape", {})
    floor_ms = meta["weight_bytes"] / (meta["dram_gb_s"] * 1e9) * 1e3 if meta.get(
        "dram_gb_s") else None
    out = [
        f"torch {meta['torch']} | device: {meta['device']} | threads {meta['threads']} | "
        f"loadavg (1/5/15 min) {meta['loadavg_at_start']} → {meta['loadavg_at_end']} | "
        f"command: `{meta['command']}`",
        "",
        f"GPT-2-small shapes ({s.get('layers')} layers, d={s.get('d_model')}, "
        f"{s.get('heads')} heads, vocab {s.get('vocab')}), fp32, random weights shared by HF "
        f"and attnkit; prompt {meta['prompt_len']} tokens, {meta['new_tokens']} new tokens, "
        f"greedy, {meta['rounds']} rounds. ms/step = (t({meta['new_tokens']} tokens) − "
        f"t(1 token)) / {meta['new_tokens'] - 1}, median over rounds; tokens/s = batch / "
        "step; speedup = tokens/s ÷ hf's, round range: min–max of the paired per-round "
        "ratios. same tokens: identical to the first variant's output.",
    ]
    if floor_ms:
        out.append(f"Weights read per step: {meta['weight_bytes'] / 1e6:.0f} MB; DRAM "
                   f"bandwidth (sum over 512 MiB): {meta['dram_gb_s']:.1f} GB/s → streaming "
                   f"them takes ~{floor_ms:.0f} ms per step at batch 1 (memory-bound; the "
                   "floor row measures it with the real products).")
    for B in sorted({r.batch for r in rows}):
        out += ["", f"**batch {B}**", "",
                "| variant | what | same tokens | ms/step | tokens/s | speedup | round range |",
                "|---|---|---|---:|---:|---:|---:|"]
        for r in rows:
            if r.batch != B:
                continue
            if r.status != "ok":
                out.append(f"| {r.variant} | error ({r.reason}) | | | | | |")
                continue
            same = "-" if r.same_tokens is None else ("yes" if r.same_tokens else "**NO**")
            sp = "1.00 (baseline)" if r.variant == BASELINE else (
                "-" if r.speedup is None else f"{r.speedup:.2f}×")
            rr = (f"{min(r.round_speedups):.2f}–{max(r.round_speedups):.2f}"
                  if r.round_speedups and r.variant != BASELINE else "-")
            out.append(f"| {r.variant} | {r.what} | {same} | {r.ms_per_step:.1f} | "
                       f"{r.tokens_per_s:.1f} | {sp} | {rr} |")
        best = max((r for r in rows if r.batch == B and r.status == "ok" and r.speedup
                    and r.variant.startswith("attnkit")), key=lambda r: r.speedup, default=None)
        if best is not None and B == 1:
            out += ["", f"Target (batch 1, ≥ {TARGET:.1f}× hf tokens/s, identical tokens): "
                    f"{best.variant} {best.speedup:.2f}× — "
                    + ("met." if best.speedup >= TARGET and best.same_tokens else "NOT met.")]
    out += ["", _timing.total_line(meta)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    return _timing.run_script(argv, "benchmarks/decode.py", build_parser(), run_benchmarks,
                              render)


if __name__ == "__main__":
    raise SystemExit(main())
