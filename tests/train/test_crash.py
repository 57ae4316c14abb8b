"""Crash safety: ``attnkit train`` killed with SIGKILL at random (seeded) moments, resumed
after each kill, ends exactly where an uninterrupted run with the same seed ends.

Each run is a real process running the real command (``attnkit.cli``), forked from a
``multiprocessing`` fork server that has imported torch and attnkit once, so a start costs
milliseconds instead of seconds. The run checkpoints after every step, so most kills land
inside a checkpoint write (the step itself is ~1 ms of a ~10 ms save); others land in data
preparation, evaluation, or the final report. After every kill every checkpoint on disk must
load (weights, optimizer, trainer state, tokenizer), and at the end the metrics, weights,
optimizer and trainer state must equal the uninterrupted run's, with no temporary file left.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from attnkit.data import load_tokenizer
from attnkit.train.checkpoint import (
    load_model,
    read_model_state,
    read_optimizer_state,
    read_trainer_state,
    resolve_checkpoint,
    tokenizer_dir,
)
from attnkit.train.metrics import read_metrics

pytestmark = pytest.mark.slow

STEPS = 36
KILLS = 12
SEED = int(os.environ.get("ATTNKIT_CRASH_SEED", "20240607"))  # the kill moments
TIMING_FIELDS = {"tokens_per_s", "ms_per_iter"}
# imported once in the fork server, not in every run
PRELOAD = ["torch", "torch._dynamo", "matplotlib.figure", "matplotlib.backends.backend_agg",
           "attnkit.cli", "attnkit.commands.train", "attnkit.commands.evaluate",
           "attnkit.train", "attnkit.data"]


def _words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocab = "the a cat dog sat on mat and ran to it was too tired attention head".split()
    return "\n".join(" ".join(rng.choice(vocab) for _ in range(rng.randint(4, 14))) + "."
                     for _ in range(n))


def _argv(out: Path, data: Path, resume: bool) -> list[str]:
    return ["train", "--data", str(data), "--tokenizer", "char", "--out", str(out),
            "--steps", str(STEPS), "--batch-size", "4", "--eval-every", "6", "--seed", "5",
            "--threads", "1", "--sample-chars", "0", "--lr", "3e-3",
            "--set", "model.n_layers=1", "--set", "model.d_model=32",
            "--set", "model.n_heads=2", "--set", "model.d_ff=64",
            "--set", "model.max_seq_len=32", "--set", "train.save_every=1",
            "--set", "train.log_every=1", "--set", "train.eval_batches=2",
            "--set", "train.warmup_steps=4", "--set", "train.progress=false",
            *(["--resume"] if resume else [])]


def _run_cli(argv: list[str], log: str) -> None:
    """The child process: ``attnkit <argv>``, output appended to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # not a multiprocessing lock: a killed run cannot free it
    from attnkit.cli import app

    app(argv, prog_name="attnkit")


@pytest.fixture(scope="module")
def ctx():
    if "forkserver" not in mp.get_all_start_methods():
        pytest.skip("needs multiprocessing's fork server (POSIX)")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    warm = ctx.Process(target=time.sleep, args=(0,))  # starts the server: imports PRELOAD
    warm.start()
    warm.join(120)
    assert warm.exitcode == 0
    return ctx


def _start(ctx, out: Path, data: Path, log: Path, resume: bool):
    p = ctx.Process(target=_run_cli, args=(_argv(out, data, resume), str(log)), daemon=True)
    p.start()
    return p


def _live_step(out: Path) -> int:
    """The step the live (fresh) run has logged last: metrics.jsonl is appended every step."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return sum('"kind": "train"' in line for line in lines)


def _saved_step(out: Path) -> int:
    """The step of the ``last`` checkpoint (0 while there is none, or while it is being
    replaced): polled, so read directly rather than through the ``.old`` fallback."""
    try:
        return json.loads((out / "last" / "trainer_state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def _check_loads(ckpt: Path) -> int:
    """Everything a checkpoint holds loads; returns its step."""
    ckpt = resolve_checkpoint(ckpt)
    model = load_model(ckpt)
    state = read_trainer_state(ckpt)
    opt = read_optimizer_state(ckpt)
    tok = load_tokenizer(tokenizer_dir(ckpt))
    assert isinstance(state["step"], int) and 1 <= state["step"] <= STEPS, state["step"]
    assert set(opt["state"]) <= {n for n, _ in model.named_parameters()}
    assert tok.vocab_size == model.config.vocab_size
    assert [r["step"] for r in read_metrics(ckpt / "metrics.jsonl")
            if r["kind"] == "train"] == list(range(1, state["step"] + 1))
    return state["step"]


def _comparable(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_metrics(path)]


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    wa, wb = read_model_state(a), read_model_state(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    oa, ob = read_optimizer_state(a), read_optimizer_state(b)
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for name in oa["state"]:
        for key, va in oa["state"][name].items():
            vb = ob["state"][name][key]
            assert torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb, (name, key)
    sa, sb = read_trainer_state(a), read_trainer_state(b)
    for key in ("step", "tokens_seen", "best_val_loss", "last_val_loss", "last_train_loss",
                "loss_sum", "loss_count", "rng", "data", "scheduler"):
        assert sa[key] == sb[key], key


def test_kill_9_at_random_moments_then_resume_matches_uninterrupted_run(ctx, tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text(_words(300))
    log = tmp_path / "train.log"

    # the uninterrupted run, timed: how long the start and each step take on this machine
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    p = _start(ctx, ref, data, log, resume=False)
    while _live_step(ref) == 0 and p.is_alive():
        time.sleep(0.002)
    t_first = time.perf_counter() - t0
    while _live_step(ref) < STEPS and p.is_alive():
        time.sleep(0.002)
    t_step = (time.perf_counter() - t0 - t_first) / (STEPS - 1)
    p.join(120)
    assert p.exitcode == 0, log.read_text()[-3000:]

    rng = random.Random(SEED)
    out = tmp_path / "crashed"
    kills: list[tuple[float, int, int]] = []  # (delay s, checkpoint step before, after)
    while len(kills) < KILLS:
        has_ckpt = any((out / n / "config.json").is_file() for n in ("last", "last.old"))
        before = _check_loads(out / "last") if has_ckpt else 0
        left = STEPS - before
        assert left > KILLS - len(kills), f"the run got too far before {KILLS} kills: {kills}"
        # a random moment: one kill in four during the start-up (data, model, resume), the
        # others in a random one of the next few steps (or its checkpoint), spread so that
        # the kills left fit in the steps left; waiting on the run's own checkpoints keeps
        # this independent of how loaded the machine is
        p = _start(ctx, out, data, log, resume=has_ckpt)
        if rng.random() < 0.25:
            delay = rng.uniform(0.0, t_first)
            p.join(delay)
        else:
            target = before + rng.randint(1, max(1, (left - 2) // (KILLS - len(kills) + 1)))
            t0 = time.perf_counter()
            while _saved_step(out) < target and p.is_alive():
                time.sleep(0.002)
            p.join(rng.uniform(0.0, 1.5 * t_step))
            delay = time.perf_counter() - t0
        assert p.exitcode is None, f"run exited ({p.exitcode}) before its kill:\n" \
                                   + log.read_text()[-3000:]
        p.kill()  # SIGKILL
        p.join(30)
        assert p.exitcode == -9
        after = 0
        for name in ("last", "best"):  # every checkpoint on disk loads
            if any((out / n).exists() for n in (name, f"{name}.old")):
                step = _check_loads(out / name)
                after = step if name == "last" else after
        assert after >= before
        kills.append((round(delay, 3), before, after))

    p = _start(ctx, out, data, log, resume=True)
    p.join(120)
    assert p.exitcode == 0, log.read_text()[-3000:]
    print(f"kills (delay s, step before, step after): {kills}")

    assert len({after for *_, after in kills}) > 3, kills  # the kills hit many steps
    assert _comparable(out / "metrics.jsonl") == _comparable(ref / "metrics.jsonl")
    assert _check_loads(out / "last") == STEPS
    _assert_same_checkpoint(out / "last", ref / "last")
    _assert_same_checkpoint(out / "best", ref / "best")
    litter = [str(f.relative_to(out)) for f in out.rglob("*")
              if ".tmp" in f.name or f.name.endswith(".old")]
    assert litter == []
