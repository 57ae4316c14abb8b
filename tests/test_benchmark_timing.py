"""benchmarks/_timing.py: the interleaving order and the report plumbing (no timing asserts)."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "_timing.py"


def _load():
    spec = importlib.util.spec_from_file_location("attnkit_bench_timing", PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_interleaved_rounds_rotate_the_first_callable():
    timing = _load()
    calls: list[str] = []
    fns = [lambda n=n: calls.append(n) or n for n in "ABC"]
    res = timing.measure_interleaved(fns, warmup=1, repeats=3, min_sample_s=0.0)
    assert calls[:3] == list("ABC")  # warm-up: one call each
    assert calls[3:] == list("ABC" "BCA" "CAB")
    assert [t.first_result for t in res] == list("ABC")
    assert all(len(t.samples_s) == 3 and t.inner == 1 for t in res)


@dataclass
class _Row:
    name: str
    ms: float


def test_report_plumbing(tmp_path, capsys):
    timing = _load()
    assert timing.command_line(["--quick", "--json", "a b.json"], "benchmarks/x.py") == \
        "python benchmarks/x.py --quick --json 'a b.json'"
    assert timing.total_line({"total_s": 1.26}) == "Total 1.3 s."
    assert timing.total_line({"total_s": 3, "interrupted": True}).endswith("partial results.")
    path = tmp_path / "r.json"
    timing.write_json(str(path), {"meta": {"n": 1}, "rows": [_Row("a", 1.5)]})
    assert json.loads(path.read_text()) == {"meta": {"n": 1}, "rows": [{"name": "a", "ms": 1.5}]}
    assert f"wrote {path}" in capsys.readouterr().err


def test_machine_description():
    import torch

    timing = _load()
    assert timing.device_desc(torch.device("cpu")).startswith("cpu")
    load = timing.loadavg()
    assert load is None or (len(load) == 3 and all(x >= 0 for x in load))
