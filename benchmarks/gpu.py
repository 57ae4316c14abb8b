#!/usr/bin/env python
"""The GPU script: checks the CUDA paths against the ``math`` reference, then measures dense
attention TFLOP/s, FlexAttention sliding window vs dense, and GPT-2-124M training MFU.

Checks (each fails the run when off by more than its stated tolerance):

* ``sdpa`` under each fused kernel (``SDPBackend.FLASH_ATTENTION``, ``EFFICIENT_ATTENTION``,
  ``CUDNN_ATTENTION``, forced with ``sdpa_kernel``) — forward and gradients of causal bf16
  attention against ``math`` in fp32 on the same (rounded) inputs;
* ``flex`` with a ``BlockMask`` (``sliding_window(127, 0)``), forward and backward, against
  ``math``: the training path of block-sparse attention on GPU;
* bf16 autocast training (``Trainer``, ``precision="bf16"``) tracks fp32 on a small GPT: every
  logged loss within 0.05 nats;
* ``torch.compile`` (``TrainConfig(compile=True)``) tracks eager: the same run's losses
  within 0.05 nats (bf16 autocast both).

Measurements (CUDA events around warmed-up calls, median):

* dense attention through ``attend(backend="sdpa")``: bf16, D=128, N ≥ 4096, causal and
  not, forward and forward+backward; TFLOP/s with FLOPs = 4·B·H·N²·D per forward (half with
  the causal mask; backward = 2.5× forward), as a fraction of the GPU's dense bf16 peak
  (table in ``_timing.py``, or ``--peak-tflops``); target ≥ 60% for the forward;
* FlexAttention ``sliding_window(W - 1, 0)`` vs dense causal (flex and SDPA) at long N:
  forward+backward time ratio;
* GPT-2-124M (``gpt2-small`` preset, dropout 0) training steps through ``Trainer``, bf16
  autocast, ``compile=True``: tokens/s and MFU = ``flops_per_token`` × tokens/s / peak;
  target ≥ 40%.

On a machine without CUDA (``--device cpu``, what the test suite runs) every check and
measurement runs in a reduced form — tiny shapes, the kernels CPU has (``flash``, and
``flex`` forward only: PyTorch has no FlexAttention backward on CPU) — and the rest are
reported as skipped with the reason; no peak is known there, so no fraction or MFU.

    python benchmarks/gpu.py                         # on a CUDA machine: the full run
    python benchmarks/gpu.py --json gpu.json
    python benchmarks/gpu.py --device cpu --quick    # the reduced CPU form
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

ATTN_TARGET, MFU_TARGET = 0.60, 0.40
CURVE_TOL = 0.05  # nats, bf16 vs fp32 and compiled vs eager logged losses


@dataclass
class Row:
    section: str  # "check" | "measure"
    name: str
    result: str = ""
    value: float | None = None  # the headline number (max error, TFLOP/s, ratio, MFU)
    fraction: float | None = None  # of peak, for TFLOP/s and MFU
    status: str = "ok"  # ok | FAIL | skipped | error
    reason: str = ""


@dataclass
class Sizes:
    batch: int
    heads: int
    head_dim: int
    check_n: int
    seq_lens: tuple[int, ...]
    window: int
    flex_n: int
    gpt_preset: str
    gpt_batch: int
    gpt_context: int
    gpt_steps: int
    curve_steps: int


FULL = Sizes(batch=4, heads=16, head_dim=128, check_n=1024, seq_lens=(4096, 8192, 16384),
             window=256, flex_n=16384, gpt_preset="gpt2-small", gpt_batch=16, gpt_context=1024,
             gpt_steps=20, curve_steps=100)
QUICK = Sizes(batch=1, heads=2, head_dim=32, check_n=128, seq_lens=(256,), window=32,
              flex_n=512, gpt_preset="gpt2-tiny", gpt_batch=2, gpt_context=64, gpt_steps=3,
              curve_steps=20)


# ---- timing ---------------------------------------------------------------------------------


def time_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median ms per call (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def _qkv(sz: Sizes, n: int, device, dtype, grad: bool, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    shape = (sz.batch, sz.heads, n, sz.head_dim)
    return [torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_(grad)
            for _ in range(3)]


# ---- checks ---------------------------------------------------------------------------------


def _compare(fn, ref, q, k, v, grads: bool) -> tuple[float, float | None]:
    """max |out - ref| and max |grad - ref grad| (relative to the largest reference grad)."""
    out = fn(q, k, v)
    r = [t.detach().float().requires_grad_(grads) for t in (q, k, v)]
    want = ref(*r)
    err = float((out.float() - want).abs().max())
    if not grads:
        return err, None
    g = torch.randn_like(want)
    got_g = torch.autograd.grad(out, (q, k, v), g.to(out.dtype))
    want_g = torch.autograd.grad(want, r, g)
    scale = max(float(w.abs().max()) for w in want_g)
    gerr = max(float((a.float() - b).abs().max()) for a, b in zip(got_g, want_g, strict=True))
    return err, gerr / scale


def check_sdpa_kernels(sz: Sizes, device, log) -> list[Row]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attnkit.attention import attend, masks

    rows = []
    causal = masks.causal()
    for kernel in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
        row = Row("check", f"sdpa {kernel.lower()} vs math (causal, bf16, grads)")
        q, k, v = _qkv(sz, sz.check_n, device, torch.bfloat16, grad=True)
        try:
            with sdpa_kernel([getattr(SDPBackend, kernel)]):
                err, gerr = _compare(lambda a, b, c: attend(a, b, c, mask=causal, backend="sdpa"),
                                     lambda a, b, c: attend(a, b, c, mask=causal, backend="math"),
                                     q, k, v, grads=True)
            row.value = max(err, gerr)
            row.result = f"max Δ out {err:.2g}, max rel Δ grad {gerr:.2g} (tol 3e-2)"
            row.status = "ok" if err <= 3e-2 and gerr <= 3e-2 else "FAIL"
        except RuntimeError as e:  # kernel not available on this device / build
            row.status, row.reason = "skipped", _short(e)
        rows.append(row)
        log(f"check: {row.name}: {row.status} {row.result or row.reason}")
    return rows


def check_flex_training(sz: Sizes, device, log) -> Row:
    from attnkit.attention import attend, masks

    row = Row("check", f"flex BlockMask sliding_window({sz.window - 1}, 0) vs math, bf16")
    grads = device.type == "cuda"
    mask = masks.sliding_window(sz.window - 1, 0)
    q, k, v = _qkv(sz, sz.check_n, device, torch.bfloat16, grad=grads)
    try:
        with torch.set_grad_enabled(grads):
            err, gerr = _compare(lambda a, b, c: attend(a, b, c, mask=mask, backend="flex"),
                                 lambda a, b, c: attend(a, b, c, mask=mask, backend="math"),
                                 q, k, v, grads=grads)
        row.value = err if gerr is None else max(err, gerr)
        row.result = f"max Δ out {err:.2g}" + (
            f", max rel Δ grad {gerr:.2g}" if gerr is not None else
            " (forward only: PyTorch has no FlexAttention backward on CPU)") + " (tol 3e-2)"
        row.status = "ok" if row.value <= 3e-2 else "FAIL"
    except Exception as e:
        row.status, row.reason = "error", _short(e)
    log(f"check: {row.name}: {row.status} {row.result or row.reason}")
    return row


def _tiny_gpt(vocab: int, context: int, seed: int):
    from attnkit.models import CausalLM, CausalLMConfig

    torch.manual_seed(seed)
    return CausalLM(CausalLMConfig(vocab_size=vocab, max_seq_len=context, d_model=128,
                                   n_layers=2, n_heads=4, activation="gelu"))


class _Stream:
    """Seeded batches of a fixed learnable sequence (a repeated random pattern + noise)."""

    def __init__(self, vocab: int, batch: int, context: int, device, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        pattern = torch.randint(vocab, (97,), generator=g)
        self.data = pattern.repeat(200)
        noise = torch.rand(len(self.data), generator=g) < 0.1
        self.data[noise] = torch.randint(vocab, (int(noise.sum()),), generator=g)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.batch, self.context, self.device, self.n = batch, context, device, 0

    def next_batch(self):
        starts = torch.randint(len(self.data) - self.context, (self.batch,), generator=self.gen)
        x = torch.stack([self.data[s:s + self.context] for s in starts.tolist()]).to(self.device)
        self.n += 1
        return {"input_ids": x, "labels": x}

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def _curve(precision: str, compile_: bool, steps: int, device, tmp: str) -> list[float]:
    from attnkit.train import TrainConfig, Trainer
    from attnkit.train.metrics import read_metrics

    out = os.path.join(tmp, f"{precision}-{compile_}")
    tc = TrainConfig(steps=steps, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                     eval_every=0, save_every=0, log_every=5, out_dir=out, device=str(device),
                     precision=precision, compile=compile_, progress=False, seed=1)
    trainer = Trainer(_tiny_gpt(64, 64, 0), _Stream(64, 8, 64, device), None, tc)
    trainer.train()
    trainer.close()
    return [r["loss"] for r in read_metrics(os.path.join(out, "metrics.jsonl"))
            if r["kind"] == "train"]


def check_training(sz: Sizes, device, tmp: str, log, no_compile: bool = False
                   ) -> list[Row]:
    rows = []
    runs = {}
    for key, precision, comp in (("fp32", "fp32", False), ("bf16", "bf16", False),
                                 ("bf16+compile", "bf16", True)):
        if comp and no_compile:
            continue
        try:
            runs[key] = _curve(precision, comp, sz.curve_steps, device, tmp)
        except Exception as e:
            runs[key] = e
    for name, a, b in (("bf16 autocast training tracks fp32", "fp32", "bf16"),
                       ("torch.compile training tracks eager (bf16)", "bf16", "bf16+compile")):
        row = Row("check", name)
        if b not in runs:
            row.status, row.reason = "skipped", "--no-compile"
            rows.append(row)
            continue
        x, y = runs[a], runs[b]
        if isinstance(x, Exception) or isinstance(y, Exception):
            e = x if isinstance(x, Exception) else y
            row.status, row.reason = "error", _short(e)
        else:
            gap = max(abs(p - q) for p, q in zip(x, y, strict=True))
            row.value = gap
            row.result = (f"max Δ loss {gap:.3g} over {len(x)} logged points (tol "
                          f"{CURVE_TOL}); loss {x[0]:.3f} → {x[-1]:.3f} / {y[-1]:.3f}")
            learned = x[0] - x[-1] > 0.5
            row.status = "ok" if gap <= CURVE_TOL and learned else "FAIL"
        rows.append(row)
        log(f"check: {row.name}: {row.status} {row.result or row.reason}")
    return rows


# ---- measurements ---------------------------------------------------------------------------


def measure_dense_attention(sz: Sizes, device, peak: float | None, cfg, log) -> list[Row]:
    """``attend(backend="sdpa")`` with PyTorch's own kernel choice and, on CUDA, each fused
    kernel forced (flash, cuDNN): the best of them is what the target is read against."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attnkit.attention import attend, masks

    kernels = {"default": None}
    if device.type == "cuda":
        kernels.update(flash=SDPBackend.FLASH_ATTENTION, cudnn=SDPBackend.CUDNN_ATTENTION)
    rows = []
    for n in sz.seq_lens:
        for causal in (False, True):
            for mode in ("fwd", "fwd+bwd"):
                grad = mode != "fwd"
                q, k, v = _qkv(sz, n, device, torch.bfloat16, grad=grad)
                dout = torch.randn_like(q)
                mask = masks.causal() if causal else None
                for kname, kernel in kernels.items():
                    name = (f"dense attention {'causal' if causal else 'full'} {mode}, bf16, "
                            f"B={sz.batch} H={sz.heads} N={n} D={sz.head_dim}, sdpa {kname}")
                    row = Row("measure", name)
                    def call(q=q, k=k, v=v, mask=mask, grad=grad, dout=dout, kernel=kernel):
                        ctx = nullcontext() if kernel is None else sdpa_kernel([kernel])
                        with ctx, torch.set_grad_enabled(grad):
                            out = attend(q, k, v, mask=mask, backend="sdpa")
                            if grad:
                                out.backward(dout)

                    try:
                        ms = time_ms(call, device, cfg.warmup, cfg.repeats)
                        flops = 4 * sz.batch * sz.heads * n * n * sz.head_dim
                        flops *= (0.5 if causal else 1.0) * (3.5 if grad else 1.0)
                        tflops = flops / (ms / 1e3) / 1e12
                        row.value = tflops
                        row.fraction = None if peak is None else tflops * 1e12 / peak
                        row.result = f"{ms:.2f} ms, {tflops:.1f} TFLOP/s" + (
                            "" if peak is None else f" = {100 * row.fraction:.1f}% of peak")
                    except RuntimeError as e:  # a kernel that does not take this shape
                        row.status, row.reason = "skipped", _short(e)
                    rows.append(row)
                    log(f"measure: {row.name}: {row.result or row.reason}")
                del q, k, v, dout
    return rows


def measure_flex_window(sz: Sizes, device, cfg, log) -> list[Row]:
    from attnkit.attention import attend, masks

    grad = device.type == "cuda"  # no FlexAttention backward on CPU
    mode = "fwd+bwd" if grad else "fwd"
    n, w = sz.flex_n, sz.window
    q, k, v = _qkv(sz, n, device, torch.bfloat16, grad=grad)
    dout = torch.randn_like(q)
    cases = {
        f"flex sliding_window({w - 1}, 0)": (masks.sliding_window(w - 1, 0), "flex"),
        "flex causal": (masks.causal(), "flex"),
        "sdpa causal": (masks.causal(), "sdpa"),
    }
    times: dict[str, float] = {}
    rows = []
    for label, (mask, backend) in cases.items():
        row = Row("measure", f"{label} {mode}, bf16, N={n}")
        try:
            def call(mask=mask, backend=backend):
                with torch.set_grad_enabled(grad):
                    out = attend(q, k, v, mask=mask, backend=backend)
                    if grad:
                        out.backward(dout)

            times[label] = time_ms(call, device, cfg.warmup, cfg.repeats)
            row.result = f"{times[label]:.2f} ms"
        except Exception as e:
            row.status, row.reason = "error", _short(e)
        rows.append(row)
    win = f"flex sliding_window({w - 1}, 0)"
    if win in times:
        parts = [f"{times[o] / times[win]:.2f}× faster than {o}" for o in
                 ("flex causal", "sdpa causal") if o in times]
        rows[0].value = times.get("sdpa causal", times.get("flex causal", 0.0)) / times[win]
        rows[0].result += " — " + ", ".join(parts)
    for r in rows:
        log(f"measure: {r.name}: {r.result or r.reason}")
    return rows


def measure_gpt2_mfu(sz: Sizes, device, peak: float | None, cfg, tmp: str, log) -> Row:
    from attnkit.models import CausalLM, CausalLMConfig
    from attnkit.train import TrainConfig, Trainer

    row = Row("measure", f"{sz.gpt_preset} training, bf16 autocast, "
              f"{'eager' if cfg.no_compile else 'compile'}, batch {sz.gpt_batch} × context "
              f"{sz.gpt_context}")
    try:
        mc = CausalLMConfig.preset(sz.gpt_preset, dropout=0.0, max_seq_len=sz.gpt_context)
        torch.manual_seed(0)
        model = CausalLM(mc)
        data = _Stream(mc.vocab_size, sz.gpt_batch, sz.gpt_context, device)
        tc = TrainConfig(steps=10**6, batch_size=sz.gpt_batch, lr=6e-4, warmup_steps=10,
                         precision="bf16", compile=not cfg.no_compile, device=str(device),
                         progress=False, eval_every=0, save_every=0, log_every=10**9,
                         out_dir=os.path.join(tmp, "gpt2"))
        trainer = Trainer(model, data, None, tc)
        trainer.raw_model.train()
        ms = time_ms(trainer._train_step, device, cfg.warmup + 2, sz.gpt_steps)
        trainer.close()
        tok_s = sz.gpt_batch * sz.gpt_context / (ms / 1e3)
        fpt = model.flops_per_token(sz.gpt_context)
        row.value = tok_s
        row.fraction = None if peak is None else fpt * tok_s / peak
        row.result = (f"{model.num_parameters() / 1e6:.1f} M parameters, {ms:.1f} ms/step, "
                      f"{tok_s:,.0f} tokens/s" + ("" if peak is None else
                                                  f", MFU {100 * row.fraction:.1f}%"))
    except Exception as e:
        row.status, row.reason = "error", _short(e)
    log(f"measure: {row.name}: {row.result or row.reason}")
    return row


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()[0]
    return text[:200]


# ---- running and report ---------------------------------------------------------------------


def run_benchmarks(cfg: argparse.Namespace, log: Callable[[str], None] | None = None) -> dict:
    if log is None:
        def log(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)
    device = torch.device(cfg.device)
    sz = QUICK if cfg.quick or device.type != "cuda" else FULL
    peak, peak_source = _timing.peak_flops(device, "bf16", cfg.peak_tflops)
    meta: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(),
        "device": _timing.device_desc(device), "date": time.strftime("%Y-%m-%d"),
        "command": cfg.command, "loadavg_at_start": _timing.loadavg(),
        "sizes": "full" if sz is FULL else "reduced", "peak_tflops": None if peak is None
        else peak / 1e12, "peak_source": peak_source, "interrupted": False,
    }
    rows: list[Row] = []
    t0 = time.perf_counter()
    if device.type == "cpu":
        old_threads = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="attnkit-bench-gpu-") as tmp, \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            rows += check_sdpa_kernels(sz, device, log)
            rows.append(check_flex_training(sz, device, log))
            rows += check_training(sz, device, tmp, log, cfg.no_compile)
            rows += measure_dense_attention(sz, device, peak, cfg, log)
            rows += measure_flex_window(sz, device, cfg, log)
            rows.append(measure_gpt2_mfu(sz, device, peak, cfg, tmp, log))
    except KeyboardInterrupt:
        meta["interrupted"] = True
    finally:
        if device.type == "cpu":
            torch.set_num_threads(old_threads)
    meta["loadavg_at_end"] = _timing.loadavg()
    meta["total_s"] = round(time.perf_counter() - t0, 1)
    return {"meta": meta, "rows": rows}


def render(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    peak = meta.get("peak_tflops")
    out = [
        f"{meta['date']} | torch {meta['torch']} | device: {meta['device']} | sizes "
        f"{meta['sizes']} | peak: " + (f"{peak:g} TFLOP/s bf16 ({meta['peak_source']})"
                                       if peak else "unknown (no fraction of peak, no MFU)")
        + f" | command: `{meta['command']}`",
        "",
        "| section | what | result | status |",
        "|---|---|---|---|",
    ]
    for r in rows:
        out.append(f"| {r.section} | {r.name} | {r.result or r.reason} | {r.status} |")
    fwd = [r for r in rows if r.name.startswith("dense attention full fwd,") and r.fraction]
    mfu = next((r for r in rows if "training, bf16" in r.name and r.fraction), None)
    if fwd:
        best = max(fwd, key=lambda r: r.fraction)
        out += ["", f"Target dense attention forward ≥ {100 * ATTN_TARGET:.0f}% of peak: best "
                f"{100 * best.fraction:.1f}% ({best.name}) — "
                + ("met." if best.fraction >= ATTN_TARGET else "NOT met.")]
    if mfu:
        out.append(f"Target GPT-2-124M training MFU ≥ {100 * MFU_TARGET:.0f}%: "
                   f"{100 * mfu.fraction:.1f}% — "
                   + ("met." if mfu.fraction >= MFU_TARGET else "NOT met."))
    failed = [r.name for r in rows if r.status in ("FAIL", "error")]
    out += ["", "Checks: " + ("all passed." if not failed else "FAILED: " + "; ".join(failed)),
            "", _timing.total_line(meta)]
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu",
      help="cuda | cuda:N | cpu (default: cuda when available)")
    a("--quick", action="store_true", help="reduced sizes (always on CPU)")
    a("--warmup", type=int, default=3, help="untimed calls per measurement (default 3)")
    a("--repeats", type=int, default=10, help="timed calls per measurement (default 10)")
    a("--peak-tflops", type=float, default=None, help="bf16 dense peak TFLOP/s (default: the "
      "table in _timing.py by GPU name)")
    a("--no-compile", action="store_true", help="no torch.compile: the compile check is "
      "skipped, the GPT-2 MFU run is eager")
    a("--threads", type=int, default=2, help="CPU threads for --device cpu (default 2)")
    a("--json", metavar="PATH", default=None, help="also write results as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """Like ``_timing.run_script``, but a skipped check is not a failure."""
    cfg = build_parser().parse_args(argv)
    cfg.command = _timing.command_line(argv, "benchmarks/gpu.py")
    result = run_benchmarks(cfg)
    print(render(result))
    if cfg.json:
        _timing.write_json(cfg.json, result)
    bad = result["meta"]["interrupted"] or any(r.status in ("FAIL", "error")
                                               for r in result["rows"])
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
