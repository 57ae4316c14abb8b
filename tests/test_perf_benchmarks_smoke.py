"""Smoke tests: the decoding, long-context, equal-time and GPU benchmark scripts still run
end to end through ``main()`` at tiny sizes on CPU (no timing assertions; their correctness
checks — identical tokens, checks against ``math`` — must pass)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"attnkit_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_decode_benchmark_tiny_run(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "decode.json"
    threads = torch.get_num_threads()
    rc = _load("decode").main([
        "--layers", "1", "--d-model", "32", "--heads", "2", "--vocab", "97", "--seq-len", "64",
        "--batches", "1,2", "--prompt-len", "5", "--new-tokens", "4", "--rounds", "1",
        "--threads", "1", "--variants", "hf,hf-static,attnkit,attnkit-dynamic,floor",
        "--json", str(out)])
    assert rc == 0 and torch.get_num_threads() == threads
    text = capsys.readouterr().out
    assert "| variant | what | same tokens | ms/step | tokens/s | speedup | round range |" in text
    assert "Target (batch 1" in text and "command: `python benchmarks/decode.py" in text
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch"], r["variant"]) for r in rows] == [
        (b, v) for b in (1, 2) for v in ("hf", "hf-static", "attnkit", "attnkit-dynamic",
                                         "floor")]
    for r in rows:
        assert r["status"] == "ok", r["reason"]
        assert r["same_tokens"] is (None if r["variant"] == "floor" else True)
        assert r["tokens_per_s"] > 0


def test_long_context_benchmark_tiny_run(tmp_path, capsys):
    out = tmp_path / "long.json"
    rc = _load("long_context").main([
        "--context", "128", "--windows", "32", "--steps", "2", "--warmup", "1", "--tail", "1",
        "--val-batches", "1", "--threads", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| attention | ms/step | tokens/s | speedup vs dense |" in text and "Target" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["dense", "window 32"]
    for r in rows:
        assert r["status"] == "ok" and r["tokens_per_s"] > 0 and len(r["losses"]) == 2
        assert r["val_loss"] > 0
    assert rows[1]["speedup"] > 0 and rows[1]["max_gap"] is not None


def test_train_time_benchmark_tiny_run(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "time.json"
    rc = _load("train_time").main(["--quick", "--seconds", "1", "--threads", "1",
                                   "--variants", "attnkit,attnkit-fp32,hf-gpt2",
                                   "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| variant | training | ms/step | steps |" in text and "Target (equal-or-better" in text
    rows = json.loads(out.read_text())["rows"]
    for r in rows:
        assert r["status"] == "ok" and r["steps"] >= 1 and r["val_loss"] > 0


def test_gpu_script_reduced_cpu_form(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    rc = _load("gpu").main(["--device", "cpu", "--quick", "--no-compile", "--warmup", "1",
                            "--repeats", "1", "--threads", "1", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "Checks: all passed." in text and "sizes reduced" in text
    rows = json.loads(out.read_text())["rows"]
    by = {r["name"]: r for r in rows}
    assert by["sdpa flash_attention vs math (causal, bf16, grads)"]["status"] == "ok"
    assert any(n.startswith("flex BlockMask") and r["status"] == "ok" for n, r in by.items())
    assert by["bf16 autocast training tracks fp32"]["status"] == "ok"
    assert by["torch.compile training tracks eager (bf16)"]["status"] == "skipped"
    assert sum(r["section"] == "measure" and r["status"] == "ok" for r in rows) >= 6
