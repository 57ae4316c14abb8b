"""Smoke test: benchmarks/train.py still imports and runs (no timing assertions).

Tiny shapes for both runs (char GPT and GPT-2), two timed rounds, no compile, one thread:
build the nanoGPT baseline and the attnkit variants from the same weights, check their losses
agree, time the steps, profile them, render the table and write JSON.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("attnkit_bench_train", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_train_benchmark_tiny_run(tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    rc = bench.main([
        "--layers", "1", "--d-model", "16", "--heads", "2", "--vocab", "23", "--batch", "2",
        "--seq-len", "8", "--gpt2-layers", "1", "--gpt2-d-model", "16", "--gpt2-heads", "2",
        "--gpt2-vocab", "37", "--gpt2-seq-len", "8", "--gpt2-batch", "1",
        "--variants", "nanogpt,attnkit,attnkit-trainer", "--rounds", "2", "--gpt2-rounds", "2",
        "--warmup", "1", "--threads", "1", "--peak-tflops", "1", "--profile", "3",
        "--profile-calls", "1", "--json", str(out),
    ])
    assert rc == 0
    assert torch.get_num_threads() == threads
    text = capsys.readouterr().out
    assert "| variant | step | ms/iter | CPU ms | tokens/s | speedup | round range | MFU |" in text
    assert "command: `python benchmarks/train.py" in text and "loadavg" in text
    assert "1.00 (baseline)" in text and "Profile char GPT attnkit-trainer" in text

    data = json.loads(out.read_text())
    meta, rows = data["meta"], data["rows"]
    assert meta["threads"] == 1 and meta["baseline"] == "nanogpt"
    assert set(meta["shapes"]) == {"char", "gpt2"}
    for info in meta["shapes"].values():
        assert info["loss_diff"] < 1e-4  # same weights, same loss
        assert info["flops_per_token"] > 0
    assert [(r["shape"], r["variant"]) for r in rows] == [
        ("char", "nanogpt"), ("char", "attnkit"), ("char", "attnkit-trainer"),
        ("gpt2", "nanogpt"), ("gpt2", "attnkit-trainer")]
    for r in rows:
        assert r["status"] == "ok", r["reason"]
        assert r["ms"] > 0 and r["tokens_per_s"] > 0 and r["speedup"] > 0 and r["mfu"] > 0
        assert len(r["samples_ms"]) == 2 and r["profile"]
