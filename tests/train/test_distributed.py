"""torchrun with 2 CPU processes (Gloo): DDP and FSDP2 match one process on the same global
batch (each rank reads half of it, ``attnkit.train.distributed_smoke``) — including a stop
after step 2 and a resume from the rank-0 checkpoint by fresh trainers."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from attnkit.train import load_model, load_training_state
from attnkit.train.distributed_smoke import run, smoke_model
from attnkit.train.metrics import read_metrics
from attnkit.train.optim import WarmupCosine, make_optimizer

pytestmark = pytest.mark.slow

STEPS, GLOBAL_BATCH, ACCUM, SPLIT = 4, 8, 2, 2


def torchrun(mode: str, out) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "attnkit.train.distributed_smoke", "--mode", mode, "--out", str(out),
           "--steps", str(STEPS), "--global-batch", str(GLOBAL_BATCH),
           "--grad-accum", str(ACCUM), "--device", "cpu", "--split-at", str(SPLIT)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"torchrun {mode} failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    run("none", out, steps=STEPS, global_batch=GLOBAL_BATCH, grad_accum=ACCUM)
    return out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, single, mode):
    torchrun(mode, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == STEPS
    want, got = read_metrics(single / "metrics.jsonl"), read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in got] == [(r["kind"], r["step"]) for r in want]
    for a, b in zip(got, want, strict=True):
        key = "loss" if a["kind"] == "train" else "val_loss"
        assert a[key] == pytest.approx(b[key], abs=1e-5), (a, b)
        if a["kind"] == "train":
            assert a["tokens_seen"] == b["tokens_seen"]
    ref = load_file(str(single / "last" / "model.safetensors"))
    mine = load_file(str(tmp_path / "last" / "model.safetensors"))
    assert mine.keys() == ref.keys()  # tied head stored once, also from FSDP's gathered state
    for k in ref:
        torch.testing.assert_close(mine[k], ref[k], rtol=0, atol=1e-5, msg=k)

    # the rank-0 checkpoint is an ordinary one: it loads, and resumes, in one process
    model = load_model(tmp_path / "last")
    assert model.lm_head.weight is model.tok_emb.weight
    fresh = smoke_model(seed=1)
    opt = make_optimizer(fresh, 1e-3)
    sched = WarmupCosine(opt, warmup_steps=1, total_steps=STEPS, min_lr=1e-4)
    state = load_training_state(tmp_path / "last", fresh, opt, sched, restore_rng=False)
    assert state["step"] == STEPS and len(state["rng_ranks"]) == 2
    assert all(s["step"].item() == STEPS for s in opt.state.values())
