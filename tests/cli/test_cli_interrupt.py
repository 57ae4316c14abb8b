"""Ctrl-C during ``attnkit train``: a real process, a real SIGINT. The run saves ``last/`` and
exits with 130 (128 + SIGINT), so ``attnkit train && attnkit generate`` stops there."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from _cli_util import TINY

from attnkit.train.checkpoint import load_model, read_trainer_state


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _train_records(path) -> list[dict]:
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "train"]


@pytest.mark.slow
def test_ctrl_c_saves_then_exits_130(tmp_path, corpus_file):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "attnkit.cli", "train", "--data", str(corpus_file),
           "--steps", "1000000", *TINY, "--set", "train.log_every=1", "--out", str(out),
           "--sample-chars", "0", "--threads", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env())
    try:
        deadline = time.monotonic() + 120
        while len(_train_records(out / "metrics.jsonl")) < 2:  # training is under way
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, (p.returncode, stdout, stderr)
    assert "Traceback" not in stderr
    step = read_trainer_state(out / "last")["step"]
    assert 2 <= step < 1_000_000
    assert f"interrupted: step {step} of 1000000" in stdout and "--resume" in stdout
    load_model(out / "last")  # the saved checkpoint is complete

