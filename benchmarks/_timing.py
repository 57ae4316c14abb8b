"""Timing and peak-memory helpers shared by the benchmark scripts.

Timing: :func:`measure` runs warm-up calls, then times repeats with ``time.perf_counter``
(``sync`` — e.g. ``torch.cuda.synchronize`` — is called before starting and before stopping the
clock) and reports the median. Calls faster than ``min_sample_s`` are looped ``inner`` times per
sample. Repeats stop early when one call exceeds ``call_budget_s`` or the timed samples together
exceed ``case_budget_s`` (at least one sample is always taken).

Memory: CPU peak RSS on Linux via ``/proc/self/status`` ``VmHWM``, reset with
``/proc/self/clear_refs`` (after ``malloc_trim`` hands freed heap pages back to the kernel, so
the next call cannot hide in already-resident pages); ``ru_maxrss`` for fresh processes; CUDA
via ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Timing",
    "measure",
    "measure_interleaved",
    "hwm_available",
    "cpu_peak_hwm",
    "cuda_peak",
    "maxrss_bytes",
    "rss_bytes",
    "fmt_bytes",
    "fmt_ms",
    "command_line",
    "total_line",
    "write_json",
    "device_desc",
    "loadavg",
    "run_script",
    "PEAK_TFLOPS",
    "gpu_key",
    "peak_flops",
]


@dataclass
class Timing:
    median_s: float
    samples_s: list[float]  # seconds per call, one entry per timed sample
    inner: int  # calls averaged in each sample
    warmup_s: list[float] = field(default_factory=list)
    stopped: str = ""  # why repeats were cut short ("" = all ran)
    first_result: Any = None  # what the first call returned (for correctness checks)


def measure(
    fn: Callable[[], Any],
    *,
    sync: Callable[[], None] | None = None,
    warmup: int = 1,
    repeats: int = 5,
    min_sample_s: float = 0.002,
    call_budget_s: float = 20.0,
    case_budget_s: float = 30.0,
    after_warmup: Callable[[], None] | None = None,
) -> Timing:
    """Median seconds per call of ``fn`` (see module docstring for the budget rules)."""
    return measure_interleaved(
        [fn], sync=sync, warmup=warmup, repeats=repeats, min_sample_s=min_sample_s,
        call_budget_s=call_budget_s, case_budget_s=case_budget_s, after_warmup=after_warmup,
    )[0]


def measure_interleaved(
    fns: list[Callable[[], Any]],
    *,
    sync: Callable[[], None] | None = None,
    warmup: int = 1,
    repeats: int = 5,
    min_sample_s: float = 0.002,
    call_budget_s: float = 20.0,
    case_budget_s: float = 30.0,
    after_warmup: Callable[[], None] | None = None,
) -> list[Timing]:
    """Like :func:`measure` for several callables, sampled round-robin with the first one
    rotating (A B C, B C A, C A B, ...), so slow drift of the machine (thermal, other load) and
    any cost of running right after another callable hit all of them alike and their ratios
    are paired. ``case_budget_s`` applies per callable; one slow call stops every callable."""
    firsts: list[list[Any]] = [[] for _ in fns]

    def timed(i: int, n: int) -> float:
        fn = fns[i]
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        for _ in range(n):
            r = fn()
            if not firsts[i]:
                firsts[i].append(r)
            del r
        if sync is not None:
            sync()
        return (time.perf_counter() - t0) / n

    k = len(fns)
    warm = [[timed(i, 1) for _ in range(max(0, warmup))] for i in range(k)]
    if after_warmup is not None:
        after_warmup()
    inner = [1] * k
    for i in range(k):
        if warm[i] and warm[i][-1] < min_sample_s:
            inner[i] = min(1000, math.ceil(min_sample_s / max(warm[i][-1], 1e-7)))
    samples: list[list[float]] = [[] for _ in fns]
    spent = 0.0
    stopped = ""
    repeats = max(1, repeats)
    for rnd in range(repeats):
        for j in range(k):
            i = (rnd + j) % k
            t = timed(i, inner[i])
            samples[i].append(t)
            spent += t * inner[i]
        if rnd == repeats - 1:
            break
        slowest = max(s[-1] for s in samples)
        if slowest > call_budget_s:
            stopped = f"one call took {slowest:.1f} s > call budget {call_budget_s:g} s"
            break
        if spent > case_budget_s * k:
            stopped = f"samples took {spent:.1f} s > case budget {case_budget_s:g} s"
            break
    return [Timing(statistics.median(samples[i]), samples[i], inner[i], warm[i], stopped,
                   firsts[i][0] if firsts[i] else None) for i in range(k)]


# ---- CPU memory -------------------------------------------------------------------------


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    """Current resident set size (Linux), or None."""
    return _proc_status_bytes("VmRSS")


def maxrss_bytes() -> int:
    """Peak RSS of this process so far (``ru_maxrss``: kB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


_libc = None


def _malloc_trim() -> None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    if _libc and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "reset the peak resident set size to the current RSS" (Linux >= 4.0)
        return True
    except OSError:
        return False


def hwm_available() -> bool:
    """True when the peak RSS can be reset and read in-process (Linux /proc)."""
    return _proc_status_bytes("VmHWM") is not None and _reset_hwm()


def cpu_peak_hwm(fn: Callable[[], Any]) -> int:
    """Bytes the process's peak RSS rose above its RSS just before ``fn()``."""
    _malloc_trim()
    _reset_hwm()
    before = rss_bytes() or 0
    r = fn()
    peak = _proc_status_bytes("VmHWM") or 0
    del r
    return max(0, peak - before)


def cuda_peak(fn: Callable[[], Any], device) -> int:
    """Bytes allocated by the caching allocator during ``fn()`` above what was allocated before."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    r = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del r
    return max(0, peak - before)


# ---- formatting ---------------------------------------------------------------------------


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            v = n / scale
            return f"{v:.1f} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{int(n)} B"


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms < 1:
        return f"{ms:.3f}"
    if ms < 100:
        return f"{ms:.2f}"
    return f"{ms:.1f}"


# --- report plumbing shared by the scripts -------------------------------------------------


def command_line(argv: list[str] | None, script: str) -> str:
    """The command that reproduces this run: ``python SCRIPT ARGS`` (``sys.argv`` when the
    script runs as a program, ``script`` + ``argv`` when ``main(argv)`` is called)."""
    args = sys.argv if argv is None else [script, *argv]
    return shlex.join(["python", *args])


def total_line(meta: dict) -> str:
    """The report's last line: total seconds, and whether the run was interrupted."""
    tail = f"Total {meta.get('total_s', 0):.1f} s."
    if meta.get("interrupted"):
        tail += " INTERRUPTED: partial results."
    return tail


def write_json(path: str, result: dict) -> None:
    """``{"meta": ..., "rows": [row as dict, ...]}`` to ``path`` (rows are dataclasses)."""
    with open(path, "w") as f:
        json.dump({"meta": result["meta"], "rows": [asdict(r) for r in result["rows"]]}, f,
                  indent=2)
    print(f"wrote {path}", file=sys.stderr)


def device_desc(device) -> str:
    """``cuda (<name>)`` or ``cpu (<model name>, N logical cores)`` for the report header."""
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         model)
    except OSError:
        pass
    return f"cpu ({model}, {os.cpu_count()} logical cores)" if model else "cpu"


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run_script(argv: list[str] | None, script: str, parser, run: Callable[[Any], dict],
               render: Callable[[dict], str]) -> int:
    """A benchmark script's ``main``: parse, run, print the report, write ``--json``; exit
    status 1 when the run was interrupted or a row failed."""
    cfg = parser.parse_args(argv)
    cfg.command = command_line(argv, script)
    result = run(cfg)
    print(render(result))
    if cfg.json:
        write_json(cfg.json, result)
    bad = result["meta"]["interrupted"] or any(r.status != "ok" for r in result["rows"])
    return 1 if bad else 0


# ---- accelerator peaks --------------------------------------------------------------------

#: Dense peak TFLOP/s (no sparsity) by GPU and compute dtype, for MFU and attention FLOP/s.
PEAK_TFLOPS = {
    ("H100 SXM", "bf16"): 989.4, ("H100 SXM", "fp32"): 66.9,
    ("H100 PCIe", "bf16"): 756.0, ("H100 PCIe", "fp32"): 51.2,
    ("H200", "bf16"): 989.4, ("H200", "fp32"): 66.9,
    ("A100", "bf16"): 312.0, ("A100", "fp32"): 19.5,
}


def gpu_key(name: str) -> str | None:
    """The :data:`PEAK_TFLOPS` row of a CUDA device name, or None."""
    n = name.upper()
    if "H200" in n:
        return "H200"
    if "H100" in n:
        return "H100 PCIe" if "PCIE" in n else "H100 SXM"
    if "A100" in n:
        return "A100"
    return None


def peak_flops(device, dtype: str = "bf16", override_tflops: float | None = None
               ) -> tuple[float | None, str | None]:
    """``(peak FLOP/s, where it comes from)``: the override, else the table row of a CUDA
    device, else ``(None, None)`` (no peak is known for CPUs)."""
    import torch

    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if getattr(device, "type", device) == "cuda":
        key = gpu_key(torch.cuda.get_device_name(device))
        if key is not None:
            return PEAK_TFLOPS[(key, dtype)] * 1e12, f"{key} {dtype} dense table"
    return None, None
