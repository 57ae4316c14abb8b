"""Smoke test: benchmarks/input_checks.py imports and runs (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "input_checks.py"


def test_input_checks_benchmark_tiny_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("attnkit_bench_input_checks", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        rc = bench.main(["--quick", "--json", str(tmp_path / "checks.json")])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    rows = json.loads((tmp_path / "checks.json").read_text())["rows"]
    assert [r["case"] for r in rows] == ["sdpa-guard fwd", "sdpa-guard fwd+bwd",
                                         "sdpa-guard decode", "dead-rows fwd",
                                         "model train step", "model decode step"]
    assert all(r["ratio"] > 0 for r in rows)
    assert "| case | shape |" in capsys.readouterr().out
