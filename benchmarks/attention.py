#!/usr/bin/env python
"""Benchmark attnkit's attention backends against torch SDPA, timed in the same run.

For each device (CPU, plus CUDA when available), case and sequence length N, this times the
forward (no grad) and the forward+backward of every backend — median of repeats after warm-up,
``time.perf_counter``, ``torch.cuda.synchronize`` on CUDA — and reports each time as a ratio
against a torch SDPA baseline measured in the same run at the same N:

* ``causal``   dense causal; baseline ``F.scaled_dot_product_attention(is_causal=True)``
* ``sliding``  ``sliding_window(W, 0)``; baseline SDPA with the equivalent dense bool mask,
               materialised outside the timed region
* ``linear``   ``attend(backend="linear", mask=causal())`` (approximate); the causal baseline
* ``hierarchical``  ``hierarchical_attention(block=B, neighbours=1, causal=True)`` (approximate:
               exact local blocks + one mean-pooled summary per distant block; ``--hier-block``);
               the causal baseline
* ``lsh``      ``lsh_attention(qk, v)``, Reformer shared-QK LSH attention, non-causal (approximate:
               keys unit-normalised, attends within sorted chunks; ``--lsh-hashes``,
               ``--lsh-chunk``, n_buckets ≈ N / chunk); baseline SDPA(q=k=qk, no mask)
* ``strided``, ``bigbird``  at one N (``--pattern-n``); dense-mask SDPA baseline

ratio = t(baseline) / t(row): > 1 means faster than the baseline, < 1 slower.

    python benchmarks/attention.py --quick                # smoke run, N=512,1024
    python benchmarks/attention.py --json out.json        # full default run
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402
from attnkit.attention import backends, masks  # noqa: E402
from attnkit.attention.core import Request, attend, explain  # noqa: E402
from attnkit.attention.hierarchical import (  # noqa: E402
    hierarchical_attention,
    hierarchical_score_numel,
)
from attnkit.attention.lsh import lsh_attention  # noqa: E402

DEFAULT_SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)
QUICK_SEQ_LENS = (512, 1024)
CASE_KEYS = ("causal", "sliding", "linear", "hierarchical", "lsh", "strided", "bigbird")
ROW_IMPLS = ("auto", "blocked", "flex", "sdpa", "math", "linear", "hierarchical", "lsh")
# rows that are not attnkit.attend backends: called directly, always "supported"
VARIANTS = ("hierarchical", "lsh")
# approximate rows: their distance from SDPA is reported, never flagged as a mismatch
APPROX = {
    "linear": "approximate (not softmax)",
    "hierarchical": "approximate (block summaries)",
    "lsh": "approximate (LSH buckets, unit-norm keys)",
}
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64,
}
AUTO_TARGET = 0.95  # dense causal: t(SDPA) / t(attend auto) should be at least this


# ---- cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    key: str
    baseline: str  # "causal": SDPA is_causal=True; "dense": SDPA with the dense bool mask;
    # "shared": SDPA(q, q, v), no mask (shared-QK, full attention)
    impls: tuple[str, ...]  # rows besides the baseline
    single_n: bool = False  # run at --pattern-n only


CASES = {
    "causal": Case("causal", "causal", ("auto", "math")),
    "sliding": Case("sliding", "dense", ("auto", "blocked", "flex", "sdpa", "math")),
    "linear": Case("linear", "causal", ("linear",)),
    "hierarchical": Case("hierarchical", "causal", ("hierarchical",)),
    "lsh": Case("lsh", "shared", ("lsh",)),
    "strided": Case("strided", "dense", ("auto", "blocked", "flex", "sdpa", "math"), True),
    "bigbird": Case("bigbird", "dense", ("auto", "blocked", "flex", "sdpa", "math"), True),
}


def case_mask(key: str, n: int, cfg: argparse.Namespace) -> masks.Mask:
    if key in ("causal", "linear", "hierarchical"):
        return masks.causal()
    if key == "lsh":
        return masks.full()
    if key == "sliding":
        return masks.sliding_window(cfg.window, 0)
    if key == "strided":
        return masks.strided(cfg.stride)
    if key == "bigbird":
        return masks.bigbird(cfg.bigbird_block, num_blocks=-(-n // cfg.bigbird_block))
    raise ValueError(f"unknown case {key!r}")


def hier_block(n: int, cfg: argparse.Namespace) -> int:
    """``--hier-block``, or round(√N) when it is 0."""
    return cfg.hier_block or max(1, round(math.sqrt(n)))


def lsh_buckets_for(n: int, cfg: argparse.Namespace) -> int:
    """About N / chunk buckets (Reformer's choice), even and at least 2."""
    return max(2, 2 * round(n / cfg.lsh_chunk / 2))


def case_title(key: str, cfg: argparse.Namespace, n: int) -> str:
    return {
        "causal": "dense causal",
        "sliding": f"sliding_window({cfg.window},0)",
        "linear": "causal linear",
        "hierarchical": f"causal hierarchical(block={hier_block(n, cfg)},neighbours=1)",
        "lsh": f"lsh(buckets={lsh_buckets_for(n, cfg)},hashes={cfg.lsh_hashes},"
               f"chunk={cfg.lsh_chunk})",
        "strided": f"strided({cfg.stride})",
        "bigbird": f"bigbird(bs={cfg.bigbird_block},w=1,g=1,r=2)",
    }[key]


# ---- results --------------------------------------------------------------------------------


@dataclass
class Mode:
    """One measurement: forward or forward+backward of one row."""

    status: str = "ok"  # "ok" | "n/a" | "skipped" | "error"
    reason: str = ""
    backend: str = ""  # the backend that ran (what "auto" resolved to)
    ms: float | None = None  # median ms per call
    samples_ms: list[float] = field(default_factory=list)
    warmup_ms: list[float] = field(default_factory=list)
    inner: int = 1
    stopped: str = ""
    mem_bytes: int | None = None
    ratio: float | None = None  # t(baseline) / t(this)
    max_abs_err: float | None = None  # forward output vs the baseline's


@dataclass
class Row:
    device: str
    case: str
    case_title: str
    impl: str  # "baseline", a backend name / "auto", or a variant ("hierarchical", "lsh")
    label: str
    n: int
    fwd: Mode
    fwdbwd: Mode


@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor
    mask: masks.Mask
    dense: torch.Tensor | None = None  # the dense bool mask for the SDPA baseline


def make_inputs(cfg, device: torch.device, key: str, n: int) -> Inputs:
    g = torch.Generator(device="cpu").manual_seed(cfg.seed + n)
    shape = (cfg.batch, cfg.heads, n, cfg.head_dim)
    q, k, v, dout = (torch.randn(shape, generator=g).to(device=device, dtype=cfg.torch_dtype)
                     for _ in range(4))
    return Inputs(q, k, v, dout, case_mask(key, n, cfg))


def make_call(impl: str, case: Case, inp: Inputs, cfg, *,
              for_memory: bool = False) -> Callable:
    """``call(q, k, v) -> out`` for one row. The baseline's dense mask is prebuilt (outside
    the timed region) except when measuring memory, where building it counts. Shared-QK rows
    (lsh and its baseline) use ``q`` as the keys and ignore ``k``."""
    if impl == "baseline":
        if case.baseline == "causal":
            return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if case.baseline == "shared":
            return lambda q, k, v: F.scaled_dot_product_attention(q, q, v)
        if for_memory:
            n, m = inp.q.shape[2], inp.mask
            return lambda q, k, v: F.scaled_dot_product_attention(
                q, k, v, attn_mask=m.dense(n, n, device=q.device))
        dense = inp.dense
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    n = inp.q.shape[2]
    if impl == "hierarchical":
        block = hier_block(n, cfg)
        return lambda q, k, v: hierarchical_attention(q, k, v, block=block, neighbours=1,
                                                      causal=True)
    if impl == "lsh":
        nbk, nh, ch, seed = lsh_buckets_for(n, cfg), cfg.lsh_hashes, cfg.lsh_chunk, cfg.seed
        return lambda q, k, v: lsh_attention(q, v, n_buckets=nbk, n_hashes=nh, chunk_size=ch,
                                             seed=seed)
    mask = inp.mask
    return lambda q, k, v: attend(q, k, v, mask=mask, backend=impl)


def make_runner(call: Callable, inp: Inputs, bwd: bool) -> Callable[[], Any]:
    if not bwd:
        q, k, v = inp.q, inp.k, inp.v

        def fwd():
            with torch.no_grad():
                return call(q, k, v)

        return fwd
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (inp.q, inp.k, inp.v))
    dout = inp.dout

    def fwd_bwd():
        qg.grad = kg.grad = vg.grad = None
        call(qg, kg, vg).backward(dout)

    return fwd_bwd


def resolve(impl: str, inp: Inputs, bwd: bool) -> tuple[str, str | None]:
    """(backend that would run, reason it can't serve this call or None)."""
    if impl == "baseline":
        return "sdpa", None
    if impl in VARIANTS:
        return impl, None
    if impl == "auto":
        q = inp.q.detach().requires_grad_(bwd)
        with torch.set_grad_enabled(bwd):
            return explain(q, inp.k, inp.v, mask=inp.mask).backend, None
    B, H, n, D = inp.q.shape
    req = Request(batch=B, q_heads=H, kv_heads=inp.k.shape[1], q_len=n, kv_len=inp.k.shape[2],
                  head_dim=D, v_dim=inp.v.shape[-1], device=inp.q.device, dtype=inp.q.dtype,
                  needs_grad=bwd, mask=inp.mask, score_mod=None, dropout_p=0.0,
                  return_weights=False)
    return impl, backends.get(impl).supports(req)


def estimate_bytes(backend: str, case: Case, inp: Inputs, bwd: bool, cfg) -> int:
    """Rough peak for backends that materialise (B, H, N, N) scores, and for the hierarchical
    and LSH variants (from the size of their fp32 score tensors); 0 when O(N)-ish.
    Factors: measured CPU peak RSS at N=2048 fp32 was 3.1× the fp32 score matrix for math
    forward, 7.1× for math forward+backward, 3.4× for eager (CPU) flex forward; at N=4096,
    9× / 16× the score tensor for hierarchical (block 64), 10.5× / 14.6× for LSH."""
    B, H, n, _ = inp.q.shape
    if backend == "hierarchical":
        numel = hierarchical_score_numel(n, hier_block(n, cfg), 1, causal=True)
        return int(B * H * numel * 4 * (17 if bwd else 10))
    if backend == "lsh":  # (B, H, hashes, N_pad, 2·chunk) scores
        c = cfg.lsh_chunk
        numel = cfg.lsh_hashes * -(-n // c) * c * 2 * c
        return int(B * H * numel * 4 * (16 if bwd else 11))
    # fp32 at least: math upcasts half inputs; flex-eager scores assumed fp32 too
    scores = B * H * n * n * max(4, inp.q.element_size())
    if backend == "math":
        return int(scores * (8 if bwd else 3.5))
    if backend == "flex" and inp.q.device.type == "cpu":  # eager, unfused on CPU
        return scores * 4
    if backend == "sdpa" and case.baseline == "dense":
        return n * n * 5  # bool mask + the float copy some kernels make
    return 0


def skip_reason(impl: str, backend: str, case: Case, inp: Inputs, bwd: bool, cfg) -> str | None:
    n = inp.q.shape[2]
    via = f"auto→{backend}: " if impl == "auto" else ""
    if (backend == "sdpa" and case.baseline == "dense" and inp.q.device.type == "cpu"
            and n > cfg.max_masked_sdpa_n):
        return (f"{via}dense-mask SDPA at N>{cfg.max_masked_sdpa_n} is very slow on CPU; "
                f"raise --max-masked-sdpa-n")
    est = estimate_bytes(backend, case, inp, bwd, cfg)
    if est > cfg.max_mem_gb * 2**30:
        return f"memory: {via}est. ~{_timing.fmt_bytes(est)} > --max-mem-gb {cfg.max_mem_gb:g}"
    return None


# ---- memory meters -----------------------------------------------------------------------


class MemMeter:
    """Peak memory of one call. ``method``: cuda | hwm | subprocess | none."""

    def __init__(self, method: str, device: torch.device, cfg):
        self.method, self.device, self.cfg = method, device, cfg

    def measure(self, run: Callable[[], Any], spec: dict) -> int | None:
        if self.method == "cuda":
            return _timing.cuda_peak(run, self.device)
        if self.method == "hwm":
            return _timing.cpu_peak_hwm(run)
        if self.method == "subprocess":
            return _mem_subprocess(spec, self.cfg)
        return None

    def describe(self) -> str:
        return {
            "cuda": "CUDA torch.cuda.max_memory_allocated during one warmed-up call, minus what "
                    "was allocated before it (inputs q/k/v/dout)",
            "hwm": "CPU peak RSS (/proc VmHWM, reset after malloc_trim) during one warmed-up call, "
                   "minus RSS before it: outputs, grads, saved tensors, workspaces, masks built "
                   "in the call; not the inputs",
            "subprocess": "CPU peak RSS rise during the first call in a fresh process per "
                          "measurement (includes one-time allocations)",
            "none": "not measured ('-'): pass --cpu-mem hwm (Linux) or subprocess",
        }[self.method]


def _mem_subprocess(spec: dict, cfg) -> int | None:
    payload = json.dumps({**spec, "cfg": _cfg_dict(cfg)})
    cmd = [sys.executable, os.path.abspath(__file__), "--_mem-worker", payload]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
        return int(json.loads(p.stdout.strip().splitlines()[-1])["bytes"])
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError):
        return None


def _mem_worker(payload: str) -> int:
    spec = json.loads(payload)
    cfg = argparse.Namespace(**spec["cfg"])
    cfg.torch_dtype = DTYPES[cfg.dtype]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    case = CASES[spec["case"]]
    inp = make_inputs(cfg, torch.device("cpu"), case.key, spec["n"])
    run = make_runner(make_call(spec["impl"], case, inp, cfg, for_memory=True), inp, spec["bwd"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc.collect()
        if _timing.hwm_available():
            used = _timing.cpu_peak_hwm(run)
        else:
            before = _timing.maxrss_bytes()
            run()
            used = _timing.maxrss_bytes() - before
    print(json.dumps({"bytes": used}))
    return 0


# ---- running -------------------------------------------------------------------------------


def _sync_for(device: torch.device) -> Callable[[], None] | None:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


def _err_tol(dtype: torch.dtype) -> float:
    return {torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float64: 1e-8}.get(dtype, 1e-3)


def _error(e: BaseException, backend: str = "") -> Mode:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return Mode("error", f"{type(e).__name__}: {msg[:120]}", backend)


def bench_modes(impls: list[str], case: Case, inp: Inputs, bwd: bool, cfg,
                meter: MemMeter) -> list[tuple[Mode, Any]]:
    """Forward (``bwd=False``) or forward+backward of each impl, timed round-robin together,
    with what each first call returned (the forward output, or None)."""
    device = inp.q.device
    out: list[tuple[Mode, Any] | None] = [None] * len(impls)
    jobs: list[tuple[int, str, str, Callable]] = []  # (index, impl, backend, runner)
    for i, impl in enumerate(impls):
        try:
            backend, why_not = resolve(impl, inp, bwd)
        except Exception as e:  # a backend under construction may fail in supports()
            out[i] = (_error(e), None)
            continue
        skip = None if why_not else skip_reason(impl, backend, case, inp, bwd, cfg)
        if why_not:
            out[i] = (Mode("n/a", why_not, backend), None)
        elif skip:
            out[i] = (Mode("skipped", skip, backend), None)
        elif cfg.dry_run:
            out[i] = (Mode("planned", "--dry-run", backend), None)
        else:
            if impl == "baseline" and case.baseline == "dense" and inp.dense is None:
                n = inp.q.shape[2]
                inp.dense = inp.mask.dense(n, n, device=device)  # outside the timed region
            jobs.append((i, impl, backend, make_runner(make_call(impl, case, inp, cfg), inp, bwd)))

    def run_jobs(group):
        mem: dict[int, int | None] = {}

        def after_warmup():
            for i, impl, _, _ in group:
                spec = {"case": case.key, "impl": impl, "n": inp.q.shape[2], "bwd": bwd}
                mem_run = make_runner(make_call(impl, case, inp, cfg, for_memory=True), inp,
                                      bwd)
                mem[i] = meter.measure(mem_run, spec)

        ts = _timing.measure_interleaved(
            [job[3] for job in group], sync=_sync_for(device), warmup=cfg.warmup,
            repeats=cfg.repeats, min_sample_s=cfg.min_sample_ms / 1e3,
            call_budget_s=cfg.call_budget_s, case_budget_s=cfg.case_budget_s,
            after_warmup=after_warmup,
        )
        for (i, _, backend, _), t in zip(group, ts, strict=True):
            out[i] = (Mode("ok", "", backend, t.median_s * 1e3, [x * 1e3 for x in t.samples_s],
                           [x * 1e3 for x in t.warmup_s], t.inner, t.stopped, mem.get(i)),
                      t.first_result)

    try:
        if jobs:
            run_jobs(jobs)
    except Exception:  # OOM, a backend bug: retry one by one to pin it on the culprit
        for job in jobs:
            try:
                run_jobs([job])
            except Exception as e:
                out[job[0]] = (_error(e, job[2]), None)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return out  # type: ignore[return-value]


def _label(impl: str, case: Case, modes: list[Mode]) -> str:
    if impl == "baseline":
        return {"causal": "F.sdpa(is_causal=True) [baseline]",
                "shared": "F.sdpa(q, q, v) shared-QK [baseline]"}.get(
                    case.baseline, "F.sdpa(dense bool mask) [baseline]")
    if impl == "auto":
        fb = [m.backend for m in modes if m.backend]
        return ("auto→" + "/".join(dict.fromkeys(fb))) if fb else "auto"
    if impl == "sdpa" and case.baseline == "dense":
        return "sdpa (attend, mask built per call)"
    return impl


def bench_rows(device_name: str, impls: list[str], case: Case, inp: Inputs, cfg,
               meter: MemMeter, baseline: tuple[Row, Any] | None) -> list[tuple[Row, Any]]:
    """Rows for ``impls`` timed together (interleaved); ``baseline`` is ``(row, fwd output)``
    unless "baseline" is one of ``impls``. Returns ``(row, forward output)`` pairs."""
    n = inp.q.shape[2]
    fwd = bench_modes(impls, case, inp, False, cfg, meter)
    fwdbwd = bench_modes(impls, case, inp, True, cfg, meter)
    rows = []
    for impl, (mf, out), (mb, _) in zip(impls, fwd, fwdbwd, strict=True):
        row = Row(device_name, case.key, case_title(case.key, cfg, n), impl,
                  _label(impl, case, [mf, mb]), n, mf, mb)
        rows.append((row, out))
        if impl == "baseline":
            baseline = (row, out)
    for row, out in rows:
        if row.impl == "baseline":
            for m in (row.fwd, row.fwdbwd):
                m.ratio = 1.0 if m.status == "ok" else None
            continue
        if baseline is None:
            continue
        brow, ref = baseline
        for m, base in ((row.fwd, brow.fwd), (row.fwdbwd, brow.fwdbwd)):
            if m.status == "ok" and base.status == "ok":
                m.ratio = base.ms / m.ms
        if isinstance(ref, torch.Tensor) and isinstance(out, torch.Tensor):
            row.fwd.max_abs_err = float((out.float() - ref.float()).abs().max())
    for row, _ in rows:
        _progress(row)
    return rows


def _progress(row: Row) -> None:
    def cell(m: Mode) -> str:
        return f"{_timing.fmt_ms(m.ms / 1e3)} ms" if m.status == "ok" else m.status
    print(f"[{row.device}] {row.case:<8} N={row.n:<6} {row.label:<36} fwd {cell(row.fwd):<12} "
          f"fwd+bwd {cell(row.fwdbwd)}", file=sys.stderr, flush=True)


def run_benchmarks(cfg: argparse.Namespace) -> dict:
    """Run everything ``cfg`` asks for; returns ``{"meta": ..., "rows": [Row, ...]}``."""
    cfg = finalize(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    devices = resolve_devices(cfg.device)
    if any(d.type == "cuda" for d in devices):
        # one FlexAttention compile per (N, mask): lift dynamo's recompile limit for the run
        import torch._dynamo.config as dcfg
        if hasattr(dcfg, "recompile_limit"):
            dcfg.recompile_limit = max(dcfg.recompile_limit, 64)
        elif hasattr(dcfg, "cache_size_limit"):
            dcfg.cache_size_limit = max(dcfg.cache_size_limit, 64)
    meta = make_meta(cfg, devices)
    rows: list[Row] = []
    t_start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # attnkit's flex backend runs FlexAttention eagerly on CPU, which warns on each call
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch")
            for device in devices:
                meter = MemMeter(meta["mem_methods"][str(device)], device, cfg)
                baselines: dict[tuple[str, int], tuple[Row, Any]] = {}
                for key in cfg.case_list:
                    case = CASES[key]
                    lens = [cfg.pattern_n] if case.single_n else cfg.seq_len_list
                    for n in lens:
                        inp = make_inputs(cfg, device, key, n)
                        bkey = ("causal" if case.baseline == "causal" else key, n)
                        impls = [i for i in case.impls if i in cfg.backend_list]
                        if bkey not in baselines:
                            # the baseline and "auto" are timed interleaved: a paired ratio
                            first = ["baseline"] + [i for i in impls if i == "auto"]
                            got = bench_rows(device.type, first, case, inp, cfg, meter, None)
                            baselines[bkey] = got[0]
                            rows += [r for r, _ in got]
                            impls = [i for i in impls if i not in first]
                        for impl in impls:
                            got = bench_rows(device.type, [impl], case, inp, cfg, meter,
                                             baselines[bkey])
                            rows += [r for r, _ in got]
                        inp.dense = None
                        del inp
                        gc.collect()  # once per (case, N): a full collection costs ~0.1 s
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                baselines.clear()
    except KeyboardInterrupt:
        meta["interrupted"] = True
        print("interrupted: reporting what was measured", file=sys.stderr)
    meta["total_s"] = round(time.perf_counter() - t_start, 1)
    return {"meta": meta, "rows": rows}


# ---- config ---------------------------------------------------------------------------------


def resolve_devices(spec: str) -> list[torch.device]:
    if spec == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    out = []
    for name in spec.split(","):
        d = torch.device(name.strip())
        if d.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
        out.append(d)
    return out


def _ints(s: str) -> list[int]:
    try:
        vals = [int(x) for x in s.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {s!r}") from e
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive ints, got {s!r}")
    return vals


def _names(valid: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(s: str) -> list[str]:
        names = [x.strip() for x in s.split(",") if x.strip()]
        bad = [x for x in names if x not in valid]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {bad or s!r}; choose from {', '.join(valid)}")
        return names
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Ratios are t(SDPA baseline) / t(row): "
        "> 1 = faster than the baseline. Progress goes to stderr, the table to stdout.",
    )
    a = p.add_argument
    a("--quick", action="store_true",
      help="smoke run: N=512,1024, 2 repeats, patterns at N=512, 1 s case budget")
    a("--device", default="auto", help="'auto' (cpu, plus cuda when available), 'cpu', 'cuda', "
      "or a comma list (default: %(default)s)")
    a("--seq-lens", type=_ints, default=None,
      help=f"comma list of N (default {','.join(map(str, DEFAULT_SEQ_LENS))})")
    a("--cases", type=_names(CASE_KEYS), default=",".join(CASE_KEYS),
      help="comma list of cases (default: %(default)s)")
    a("--backends", type=_names(ROW_IMPLS), default=",".join(ROW_IMPLS),
      help="comma list of rows to run; the SDPA baseline always runs (default: %(default)s)")
    a("--batch", type=int, default=1, help="B (default: %(default)s)")
    a("--heads", type=int, default=8, help="H (default: %(default)s)")
    a("--head-dim", type=int, default=64, help="D (default: %(default)s)")
    a("--dtype", choices=sorted(DTYPES), default="float32", help="(default: %(default)s)")
    a("--threads", type=int, default=None,
      help="torch.set_num_threads (default: leave torch's default)")
    a("--window", type=int, default=256,
      help="sliding_window left size, right=0 (default: %(default)s)")
    a("--stride", type=int, default=64, help="strided pattern stride (default: %(default)s)")
    a("--bigbird-block", type=int, default=64, help="bigbird block size (default: %(default)s)")
    a("--hier-block", type=int, default=64,
      help="hierarchical block size; 0 = round(√N) (default: %(default)s)")
    a("--lsh-hashes", type=int, default=2, help="LSH hash rounds (default: %(default)s)")
    a("--lsh-chunk", type=int, default=64,
      help="LSH chunk size; n_buckets ≈ N / chunk, even, ≥ 2 (default: %(default)s)")
    a("--pattern-n", type=int, default=None,
      help="N for strided/bigbird (default min(2048, max --seq-lens); --quick 512)")
    a("--repeats", type=int, default=None, help="timed samples per measurement (default 5; "
      "--quick 2)")
    a("--warmup", type=int, default=1,
      help="untimed warm-up calls per measurement (default: %(default)s)")
    a("--min-sample-ms", type=float, default=2.0,
      help="loop calls faster than this inside one timed sample (default: %(default)s)")
    a("--call-budget-s", type=float, default=20.0,
      help="stop repeating once one call takes longer than this (default: %(default)s)")
    a("--case-budget-s", type=float, default=None,
      help="stop repeating once a measurement's samples took this long (default 30; --quick 1)")
    a("--max-masked-sdpa-n", type=int, default=8192,
      help="CPU only: skip SDPA with a dense N×N mask (baseline, sdpa, auto→sdpa) above this "
      "N (default: %(default)s)")
    a("--max-mem-gb", type=float, default=4.0,
      help="skip measurements whose estimated peak (math, eager CPU flex: O(H·N²)) exceeds "
      "this many GiB (default: %(default)s)")
    a("--cpu-mem", choices=("auto", "hwm", "subprocess", "none"), default="auto",
      help="CPU peak memory: hwm = in-process peak RSS via /proc (Linux; 'auto' uses it when "
      "available, else none); subprocess = fresh process per measurement (slow); none = '-' "
      "(default: %(default)s)")
    a("--dry-run", action="store_true",
      help="list what would run, be skipped or be n/a, without timing anything")
    a("--seed", type=int, default=0, help="input RNG seed (default: %(default)s)")
    a("--json", metavar="PATH", default=None, help="also write results as JSON")
    a("--_mem-worker", dest="mem_worker", default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def finalize(cfg: argparse.Namespace) -> argparse.Namespace:
    """Fill quick-mode / derived defaults (idempotent)."""
    cfg = argparse.Namespace(**vars(cfg))
    if cfg.hier_block < 0 or cfg.lsh_hashes < 1 or cfg.lsh_chunk < 1:
        raise SystemExit("--hier-block must be >= 0, --lsh-hashes and --lsh-chunk >= 1")
    if getattr(cfg, "command", None) is None:
        cfg.command = _timing.command_line(None, "")
    if cfg.seq_lens is None:
        cfg.seq_lens = list(QUICK_SEQ_LENS if cfg.quick else DEFAULT_SEQ_LENS)
    if cfg.repeats is None:
        cfg.repeats = 2 if cfg.quick else 5
    if cfg.case_budget_s is None:
        cfg.case_budget_s = 1.0 if cfg.quick else 30.0
    if cfg.pattern_n is None:
        cfg.pattern_n = min(512 if cfg.quick else 2048, max(cfg.seq_lens))
    cfg.seq_len_list = list(cfg.seq_lens)
    cfg.case_list = list(cfg.cases)
    cfg.backend_list = list(cfg.backends)
    cfg.torch_dtype = DTYPES[cfg.dtype]
    return cfg


def _cfg_dict(cfg) -> dict:
    return {k: v for k, v in vars(cfg).items() if k != "torch_dtype"}


def make_meta(cfg, devices: list[torch.device]) -> dict:
    mem = {}
    for d in devices:
        if d.type == "cuda":
            mem[str(d)] = "cuda"
        elif cfg.cpu_mem == "auto":
            mem[str(d)] = "hwm" if _timing.hwm_available() else "none"
        else:
            mem[str(d)] = cfg.cpu_mem
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "devices": [_timing.device_desc(d) for d in devices],
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": (_timing.loadavg() or [None])[0],
        "dtype": str(cfg.torch_dtype).replace("torch.", ""),
        "shape": {"B": cfg.batch, "H": cfg.heads, "D": cfg.head_dim},
        "command": cfg.command,
        "config": _cfg_dict(cfg),
        "mem_methods": mem,
        "mem_descriptions": {k: MemMeter(v, torch.device(k), cfg).describe()
                             for k, v in mem.items()},
        "interrupted": False,
    }


# ---- report ---------------------------------------------------------------------------------


def _cell(m: Mode) -> str:
    if m.status == "ok":
        return _timing.fmt_ms(m.ms / 1e3)
    return f"{m.status} ({m.reason})"


def _ratio(m: Mode, base_ok: bool) -> str:
    if m.ratio is not None:
        return f"{m.ratio:.2f}×"
    if m.status == "ok" and not base_ok:
        return "n/a (no baseline)"
    return "-"


def _reps(m: Mode) -> str:
    if m.status != "ok":
        return "-"
    s = str(len(m.samples_ms)) + (f"×{m.inner}" if m.inner > 1 else "")
    return s + ("*" if m.stopped else "")


def render(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    out = [
        f"torch {meta['torch']} | device: {'; '.join(meta['devices'])} | threads "
        f"{meta['threads']} | dtype {meta['dtype']} | B={meta['shape']['B']} "
        f"H={meta['shape']['H']} D={meta['shape']['D']} | command: `{meta['command']}`",
        "",
        f"Times: median ms per call of {meta['config']['repeats']} repeats after "
        f"{meta['config']['warmup']} warm-up (time.perf_counter; cuda synchronize). "
        "Ratio = t(SDPA baseline) / t(row), same N, same run: >1 = faster than the baseline. "
        "Baselines: dense causal/linear/hierarchical → "
        "F.scaled_dot_product_attention(is_causal=True); lsh → "
        "F.scaled_dot_product_attention(qk, qk, v) (shared QK, no mask); "
        "patterns → F.scaled_dot_product_attention with the dense bool mask built outside "
        "the timed region. fwd = no grad; fwd+bwd = forward + backward(dout). The baseline "
        "and the auto row are sampled interleaved (A B A B ...), so their ratio is paired; "
        "other rows are timed after them. Block layouts / tile plans / BlockMasks are cached "
        "by attnkit per (pattern, N) and built during warm-up; the dense masks that the sdpa "
        "and math backends build on every call are timed.",
    ]
    load = meta.get("loadavg_at_start")
    if load is not None and meta.get("cpu_count") and load > 0.5 * meta["cpu_count"]:
        out.append(f"WARNING: 1-min load average was {load} on {meta['cpu_count']} cores at "
                   "start: other processes compete for the CPU, timings are noisy (OpenMP threads "
                   "spinning against other work inflate multi-threaded CPU times most; "
                   "--threads 1 is less affected).")
    for dev, how in meta["mem_descriptions"].items():
        out.append(f"Peak mem ({dev}), fwd / fwd+bwd: {how}.")
    out.append("reps: timed samples (×k = k calls per sample; * = cut short by the time budget).")
    by_key = {}
    for r in rows:
        if r.impl == "baseline":
            by_key[(r.device, "causal" if CASES[r.case].baseline == "causal" else r.case, r.n)] = r
    for dev in dict.fromkeys(r.device for r in rows):
        out += ["", f"### {dev}", "",
                "| case | backend | N | fwd ms | fwd ratio vs SDPA | fwd+bwd ms | fwd+bwd ratio "
                "| peak mem (fwd / fwd+bwd) | reps |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if r.device != dev:
                continue
            b = by_key.get((dev, "causal" if CASES[r.case].baseline == "causal" else r.case, r.n))
            mem = f"{_timing.fmt_bytes(r.fwd.mem_bytes)} / {_timing.fmt_bytes(r.fwdbwd.mem_bytes)}"
            out.append(
                f"| {r.case_title} | {r.label} | {r.n} | {_cell(r.fwd)} | "
                f"{_ratio(r.fwd, bool(b and b.fwd.status == 'ok'))} | {_cell(r.fwdbwd)} | "
                f"{_ratio(r.fwdbwd, bool(b and b.fwdbwd.status == 'ok'))} | {mem} | "
                f"{_reps(r.fwd)} / {_reps(r.fwdbwd)} |"
            )
    notes = []
    for r in rows:
        if r.case == "causal" and r.impl == "auto":
            vals = [(w, m.ratio) for w, m in (("fwd", r.fwd), ("fwd+bwd", r.fwdbwd))
                    if m.ratio is not None]
            if vals:
                flag = "ok" if all(x >= AUTO_TARGET for _, x in vals) else "BELOW TARGET"
                notes.append(f"- [{r.device}] dense causal, auto vs SDPA, N={r.n}: "
                             + ", ".join(f"{w} {x:.3f}×" for w, x in vals)
                             + f" (target ≥ {AUTO_TARGET}) {flag}")
        approx = APPROX.get(r.impl) or APPROX.get(r.fwd.backend)
        exact = approx is None
        err = r.fwd.max_abs_err
        tol = _err_tol(DTYPES[meta["dtype"]])
        if err is not None and (exact and err > tol or not math.isfinite(err)):
            notes.append(f"- [{r.device}] MISMATCH {r.case_title} / {r.label}, N={r.n}: "
                         f"max |out − SDPA| = {err:.3g} > {tol:g}")
        elif err is not None and not exact:
            notes.append(f"- [{r.device}] {r.case_title} / {r.label}, N={r.n}: {approx}, "
                         f"max |out − SDPA| = {err:.3g}")
    if notes:
        out += ["", "Checks:", *notes]
    out += ["", _timing.total_line(meta)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    cfg.command = _timing.command_line(argv, "benchmarks/attention.py")
    if cfg.mem_worker is not None:
        return _mem_worker(cfg.mem_worker)
    result = run_benchmarks(cfg)
    print(render(result))
    if cfg.json:
        _timing.write_json(cfg.json, result)
    return 1 if result["meta"].get("interrupted") else 0


if __name__ == "__main__":
    raise SystemExit(main())
