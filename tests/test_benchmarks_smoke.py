"""Smoke test: benchmarks/attention.py still imports and runs (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "attention.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("attnkit_bench_attention", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_attention_benchmark_tiny_run(tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        # one thread: OpenMP spinning on a busy machine makes 2-thread tiny calls ~10x slower
        # (flex is left out: its first call imports the compiler stack, seconds on its own)
        rc = bench.main([
            "--device", "cpu", "--seq-lens", "128",
            "--cases", "causal,sliding,linear,hierarchical,lsh",
            "--backends", "auto,math,sdpa,blocked,linear,hierarchical,lsh", "--window", "32",
            # small blocks / chunks so that N=128 exercises the summaries and several buckets
            "--hier-block", "16", "--lsh-chunk", "32", "--repeats", "1",
            "--warmup", "1", "--min-sample-ms", "0", "--threads", "1", "--json", str(out),
        ])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    table = capsys.readouterr().out
    assert "| case | backend | N |" in table and "command:" in table

    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {r["case"] for r in rows} == {"causal", "sliding", "linear", "hierarchical", "lsh"}
    assert all(r["n"] == 128 for r in rows)
    for r in rows:
        for mode in (r["fwd"], r["fwdbwd"]):
            assert mode["status"] in {"ok", "n/a", "skipped", "error"}
            if mode["status"] == "ok":
                assert mode["ms"] > 0
    # The baselines and the stable backends must actually run: an "error" here means the
    # benchmark no longer matches attnkit's API, not that a backend is slow.
    stable = [r for r in rows if r["impl"] in ("baseline", "math")]
    assert stable and all(r["fwd"]["status"] == "ok" and r["fwdbwd"]["status"] == "ok"
                          for r in stable)
    causal_base = next(r for r in rows if r["impl"] == "baseline" and r["case"] == "causal")
    assert causal_base["fwd"]["ratio"] == 1.0
    math_row = next(r for r in rows if r["impl"] == "math" and r["case"] == "causal")
    assert math_row["fwd"]["ratio"] is not None and math_row["fwd"]["max_abs_err"] < 1e-3
    # The approximate variants run forward and forward+backward, get a ratio against their
    # baseline and an error that is reported as approximate, never as a mismatch.
    for case in ("hierarchical", "lsh"):
        row = next(r for r in rows if r["case"] == case and r["impl"] == case)
        assert row["fwd"]["status"] == "ok" and row["fwdbwd"]["status"] == "ok"
        assert row["fwd"]["ratio"] is not None and row["fwdbwd"]["ratio"] is not None
        assert row["fwd"]["max_abs_err"] is not None
    lsh_base = next(r for r in rows if r["case"] == "lsh" and r["impl"] == "baseline")
    assert lsh_base["fwd"]["status"] == "ok" and lsh_base["fwdbwd"]["status"] == "ok"
    assert "approximate (block summaries)" in table and "approximate (LSH buckets" in table
    assert "MISMATCH" not in table
