"""Smoke test: benchmarks/models.py still imports and runs (no timing assertions).

A ``--quick``-sized case shrunk further (2 layers, tiny widths and vocabularies, short inputs,
one repeat, one thread) goes through ``main()``: build the HF models, save, load into attnkit,
check they agree, time both, render the table and write JSON.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "models.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("attnkit_bench_models", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_models_benchmark_tiny_run(tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        rc = bench.main([
            "--quick", "--layers", "2", "--d-model", "32", "--heads", "4", "--d-ff", "64",
            "--vocab", "97", "--batch", "2", "--seq-len", "16", "--repeats", "1",
            "--warmup", "0", "--min-sample-ms", "0", "--threads", "1", "--profile", "5",
            "--profile-calls", "1", "--json", str(out),
        ])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    table = capsys.readouterr().out
    assert "| model | mode | attnkit ms | transformers ms | ratio |" in table
    assert "command:" in table and "transformers" in table and "MISMATCH" not in table
    assert torch.get_num_threads() == threads

    data = json.loads(out.read_text())
    assert data["meta"]["hf_attn_implementation"] == "sdpa"
    rows = data["rows"]
    assert [(r["model"], r["mode"]) for r in rows] == [
        ("gpt2", "fwd"), ("gpt2", "fwdbwd"), ("bert", "fwd"), ("bert", "fwdbwd"), ("t5", "fwd"),
        ("t5", "fwdbwd")]
    for r in rows:
        assert r["status"] == "ok", r["reason"]
        assert r["attnkit"]["ms"] > 0 and r["transformers"]["ms"] > 0 and r["ratio"] > 0
        assert r["max_abs_diff"] < 1e-3  # same weights, same numbers
        if r["mode"] == "fwdbwd":
            assert r["rel_diff"] < 1e-3
        assert r["profile"]["ops"]
