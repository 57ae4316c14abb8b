"""Smoke test: benchmarks/train.py still imports and runs (no timing assertions).

Tiny shapes for both runs (char GPT and GPT-2), two timed rounds, no compile, one thread:
build the peers (HF GPT-2, x-transformers) and the attnkit variants, check attnkit computes
the HF model's loss from its weights, time the steps, profile them, render the table and
write JSON.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train.py"

pytest.importorskip("transformers")
pytest.importorskip("x_transformers")


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
        "--variants", "hf-gpt2,x-transformers,hf-gpt2-bf16,attnkit-fp32,attnkit",
        "--gpt2-variants", "hf-gpt2,attnkit", "--rounds", "2", "--gpt2-rounds", "2",
        "--warmup", "1", "--threads", "1", "--peak-tflops", "1", "--profile", "3",
        "--profile-calls", "1", "--json", str(out),
    ])
    assert rc == 0
    assert torch.get_num_threads() == threads
    text = capsys.readouterr().out
    assert ("| variant | step | precision | params | ms/iter | CPU ms | tokens/s | speedup | "
            "round range | MFU |") in text
    assert "command: `python benchmarks/train.py" in text and "loadavg" in text
    assert "1.00 (baseline)" in text and "Profile char GPT attnkit" in text
    assert "Target (≥ 1.67× the fastest fp32 peer)" in text

    data = json.loads(out.read_text())
    meta, rows = data["meta"], data["rows"]
    assert meta["threads"] == 1 and meta["baseline"] == "hf-gpt2"
    assert set(meta["shapes"]) == {"char", "gpt2"}
    for info in meta["shapes"].values():
        assert info["loss_diff"] < 1e-4  # same weights, same loss
        assert info["flops_per_token"] > 0
    assert [(r["shape"], r["variant"]) for r in rows] == [
        ("char", "hf-gpt2"), ("char", "x-transformers"), ("char", "hf-gpt2-bf16"),
        ("char", "attnkit-fp32"), ("char", "attnkit"), ("gpt2", "hf-gpt2"),
        ("gpt2", "attnkit")]
    precisions = {r["variant"]: r["precision"] for r in rows if r["shape"] == "char"}
    assert precisions["hf-gpt2"] == precisions["attnkit-fp32"] == "fp32"
    assert precisions["hf-gpt2-bf16"] == "bf16"
    assert precisions["attnkit"] in ("fp32", "bf16")  # auto: by the CPU
    for r in rows:
        assert r["status"] == "ok", r["reason"]
        assert r["ms"] > 0 and r["tokens_per_s"] > 0 and r["speedup"] > 0 and r["mfu"] > 0
        assert r["params"] > 0 and len(r["samples_ms"]) == 2 and r["profile"]


def test_peer_loop_trains():
    """The peers' loop lowers the loss of each peer on a repeated batch."""
    sys.path.insert(0, str(BENCH.parent))
    import _peers

    shape = dict(layers=1, d_model=16, heads=2, vocab=11, batch=4, seq_len=8)
    for name in _peers.PEERS:
        model, loss_fn = _peers.build_peer(name, shape, seed=0)
        x = torch.randint(0, 11, (4, 8), generator=torch.Generator().manual_seed(0))
        loop = _peers.PeerLoop(model, loss_fn, lambda x=x: x, lr=1e-2, warmup=0,
                               total_steps=30)
        first = float(loop.step())
        for _ in range(29):
            last = float(loop.step())
        assert last < first - 0.5, (name, first, last)
