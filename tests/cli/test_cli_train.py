"""`attnkit train` -> `generate` -> `evaluate`, resume, config files, objectives, errors."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from _cli_util import TINY, cli, error_line
from safetensors.torch import load_file

from attnkit.commands.config_files import coerce, load_config_file
from attnkit.commands.train import SAMPLE_RULE, resolve_run
from attnkit.train.checkpoint import read_config, read_trainer_state
from attnkit.train.metrics import read_metrics


def test_train_generate_evaluate_round_trip(trained):
    out, stdout = trained
    for name in ("last", "best"):
        assert (out / name / "config.json").is_file()
        assert (out / name / "tokenizer" / "tokenizer.json").is_file()
    assert read_trainer_state(out / "last")["step"] == 3
    run = json.loads((out / "run.json").read_text())
    assert run["model_preset"] == "char-gpt" and run["model"] == {"n_layers": 1, "d_model": 32,
                                                                   "n_heads": 2}
    assert read_config(out / "last")["model"]["vocab_size"] == run["model_config"]["vocab_size"]
    assert "tokenizer: char" in stdout and "validation: loss" in stdout
    assert "sample (seed 1337" in stdout and f"checkpoints: {out / 'last'}" in stdout

    # one prompt streams; seeded generation is reproducible
    r = cli("generate", "--checkpoint", out, "The ", "-n", 30, "--seed", 3)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("The ") and len(r.stdout.rstrip("\n")) >= 4
    again = cli("generate", "--checkpoint", out / "best", "The ", "-n", 30, "--seed", 3,
                "--no-stream")
    assert again.stdout == r.stdout
    # longer than the context (64): the window slides
    long = cli("generate", "-k", out, "x", "-n", 150, "--seed", 0, "--ignore-eos")
    assert long.exit_code == 0, long.stderr
    assert len(long.stdout) > 100
    # several prompts: one batch, printed per prompt; greedy
    r = cli("generate", "-k", out, "def ", "class ", "-n", 8, "--temperature", 0)
    assert r.exit_code == 0, r.stderr
    assert "[1/2] 'def '" in r.stdout and "[2/2] 'class '" in r.stdout

    # evaluate on the run's validation split = the trainer's last validation
    r = cli("evaluate", "--checkpoint", out / "best", "--json", "--batch-size", 12,
            "--max-batches", 20)
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    want = [m for m in read_metrics(out / "metrics.jsonl") if m["kind"] == "eval"][-1]
    assert got["loss"] == pytest.approx(want["val_loss"], rel=1e-5)
    assert got["perplexity"] == pytest.approx(want["val_ppl"], rel=1e-5)
    r = cli("evaluate", "--checkpoint", out)  # a run dir: its best/
    assert r.exit_code == 0, r.stderr
    assert "perplexity" in r.stdout and "validation split" in r.stdout
    # train's final report is the whole validation split, as evaluate's default
    r = cli("evaluate", "--checkpoint", out / "last", "--json")
    reported = float(re.search(r"validation: loss ([0-9.]+)", stdout).group(1))
    assert json.loads(r.stdout)["loss"] == pytest.approx(reported, abs=6e-5)


@pytest.mark.filterwarnings("ignore:resuming with a different training config")
def test_resume_continues(tmp_path, corpus_file):
    out = tmp_path / "run"
    first = cli("train", "--data", corpus_file, "--steps", 3, *TINY, "--out", out,
                "--sample-chars", 0)
    assert first.exit_code == 0, first.stderr
    # --resume takes the run's settings from run.json: only the new step count is given
    r = cli("train", "--out", out, "--resume", "--steps", 6, "--sample-chars", 0)
    assert r.exit_code == 0, r.stderr
    assert f"resumed from {out / 'last'} at step 3" in r.stdout
    assert read_trainer_state(out / "last")["step"] == 6
    records = read_metrics(out / "metrics.jsonl")
    assert [(m["kind"], m["step"]) for m in records] == [
        ("train", 3), ("eval", 3), ("train", 6), ("eval", 6)]
    assert records[2]["tokens_seen"] == 2 * records[0]["tokens_seen"]
    assert json.loads((out / "run.json").read_text())["model"]["d_model"] == 32


def test_same_seed_same_weights(tmp_path, corpus_file):
    """The initial weights follow --seed too (not only the data order and dropout)."""
    weights = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        r = cli("train", "--data", corpus_file, "--steps", 2, *TINY, "--seed", seed, "--out",
                tmp_path / name, "--sample-chars", 0)
        assert r.exit_code == 0, r.stderr
        weights.append(load_file(tmp_path / name / "last" / "model.safetensors"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(weights[0]["tok_emb.weight"], weights[2]["tok_emb.weight"])


def test_resume_with_another_model_is_an_error(trained):
    out, _ = trained
    line = error_line(cli("train", "--out", out, "--resume", "--set", "model.d_model=64"))
    assert "d_model (checkpoint 32, requested 64)" in line and "config.json" in line


@pytest.mark.parametrize("case", ["missing", "empty", "not-utf8", "preset", "set-train",
                                  "set-section", "set-model", "set-type", "resume-none",
                                  "config-missing", "config-section", "objective"])
def test_errors_exit_2_with_one_line(tmp_path, case):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n\xff\xfe more")
    (tmp_path / "empty.txt").write_text("   \n\n")
    (tmp_path / "cfg.toml").write_text("[optimizer]\nlr = 1\n")
    out = ["--out", tmp_path / "run"]
    args, want = {
        "missing": (["--data", tmp_path / "nope.txt"], "nope.txt"),
        "empty": (["--data", tmp_path / "empty.txt"], "empty corpus"),
        "not-utf8": (["--data", bad], "not valid UTF-8 at byte offset 10"),
        "preset": (["--preset", "gpt9"], "unknown preset 'gpt9'"),
        "set-train": (["--set", "train.learning_rate=1"], "['learning_rate']"),
        "set-section": (["--set", "optimizer.lr=1"], "'optimizer.lr'"),
        "set-model": (["--set", "model.layers=2"], "unknown [model] key ['layers']"),
        "set-type": (["--set", "train.steps=many"], "train.steps: expected an integer"),
        "resume-none": (["--resume"], "no checkpoint to resume from"),
        "config-missing": (["--config", tmp_path / "nope.toml"], "nope.toml"),
        "config-section": (["--config", tmp_path / "cfg.toml"], "['optimizer']"),
        "objective": (["--objective", "mlm", "--preset", "char-gpt"], "char-gpt"),
    }[case]
    line = error_line(cli("train", *args, *out))
    assert want in line, line
    if case == "set-train":
        assert "valid keys" in line and "'lr'" in line


def test_config_file_and_precedence(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('model_preset = "gpt2-tiny"\n[model]\nn_layers = 3\n'
                   '[train]\nsteps = 7\nlr = 3e-4\nbetas = [0.9, 0.95]\n'
                   '[data]\nval_fraction = 0.2\n[tokenizer]\nvocab_size = 300\n')
    res = resolve_run(str(cfg), ["train.steps=9", "model.d_ff=none"],
                      {"batch_size": 4, "lr": 1e-3, "out": str(tmp_path / "o")})
    run, tc = res.run, res.train
    assert run.objective == "causal" and run.model_preset == "gpt2-tiny"
    assert run.model == {"n_layers": 3, "d_ff": None}
    assert (tc.steps, tc.batch_size, tc.lr, tc.min_lr, tc.betas) == (9, 4, 1e-3, 1e-4,
                                                                      (0.9, 0.95))
    assert tc.warmup_steps == 0 and tc.eval_every == 0  # short run: evaluate at the end
    assert run.data.val_fraction == 0.2 and run.tokenizer.vocab_size == 300
    # YAML and JSON files hold the same sections; a preset implies its objective
    (tmp_path / "c.json").write_text(json.dumps({"model_preset": "bert-tiny",
                                                 "train": {"steps": 5}}))
    res = resolve_run(str(tmp_path / "c.json"), [], {"out": str(tmp_path / "o")})
    assert res.run.objective == "mlm" and res.train.steps == 5
    (tmp_path / "c.yaml").write_text("train:\n  lr: 3e-4\n  steps: 40\n")  # YAML's 3e-4: a str
    assert resolve_run(str(tmp_path / "c.yaml"), [], {}).train.lr == 3e-4
    default = resolve_run(None, [], {})
    assert default.out_dir.as_posix() == "runs/char-gpt"
    assert (default.train.steps, default.train.batch_size, default.train.lr) == (2000, 12, 3e-3)
    assert resolve_run(None, [], {"model_preset": "gpt2-small"}).train.lr == 6e-4


def test_yaml_without_pyyaml_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)
    (tmp_path / "c.yaml").write_text("train: {steps: 3}\n")
    with pytest.raises(Exception, match="pip install pyyaml"):
        load_config_file(tmp_path / "c.yaml")


def test_coerce_by_field_type():
    assert coerce("3e-4", float) == 3e-4 and coerce("1e3", int) == 1000
    assert coerce("none", int | None) is None and coerce("true", bool | str) is True
    assert coerce("runs/x/last", bool | str) == "runs/x/last"
    assert coerce("0.9,0.99", tuple[float, float]) == (0.9, 0.99)
    assert coerce('{"type": "linear", "factor": 2}', dict | None) == {"type": "linear",
                                                                        "factor": 2}
    with pytest.raises(ValueError, match="expected a boolean"):
        coerce("maybe", bool)


def test_mlm_objective(tmp_path, corpus_file):
    out = tmp_path / "mlm"
    r = cli("train", "--objective", "mlm", "--data", corpus_file, "--steps", 2, "--out", out,
            "--vocab-size", 300, "--set", "model.n_layers=1", "--set", "model.d_model=32",
            "--set", "model.n_heads=2", "--set", "model.d_ff=64", "--set", "data.seq_len=32")
    assert r.exit_code == 0, r.stderr
    assert "tokenizer: wordpiece" in r.stdout and "BertForMaskedLM" in r.stdout
    r = cli("evaluate", "-k", out, "--json", "--max-batches", 2)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["architecture"] == "BertForMaskedLM"
    # a masked LM fills its mask token in (greedy: the argmax; see test_cli_hf_export.py)
    assert "put '[MASK]' in the prompt" in error_line(cli("generate", "-k", out, "hi"))
    r = cli("generate", "-k", out, "the [MASK] statement", "--temperature", 0)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("the") and "statement" in r.stdout


def test_seq2seq_objective(tmp_path):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    pairs = tmp_path / "pairs.jsonl"
    with pairs.open("w") as f:
        for i in range(40):
            src = " ".join(words[(i + k) % 10] for k in range(3))
            f.write(json.dumps({"source": src, "target": " ".join(reversed(src.split()))})
                    + "\n")
    out = tmp_path / "s2s"
    r = cli("train", "--objective", "seq2seq", "--data", pairs, "--steps", 2, "--out", out,
            "--vocab-size", 100, "--set", "model.n_layers=1", "--set", "model.d_model=32",
            "--set", "model.d_ff=64", "--set", "model.head_dim=8")
    assert r.exit_code == 0, r.stderr
    assert "Seq2SeqLM" in r.stdout and "sample (greedy)" in r.stdout
    r = cli("generate", "-k", out, "alpha beta gamma", "--num-beams", 2, "-n", 5)
    assert r.exit_code == 0, r.stderr
    r = cli("evaluate", "-k", out, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["architecture"] == "Seq2SeqLM"
    line = error_line(cli("train", "--objective", "seq2seq", "--out", tmp_path / "x"))
    assert "--data" in line


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def test_python_dash_m(tmp_path):
    p = subprocess.run([sys.executable, "-m", "attnkit.cli", "train", "--help"],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 0 and "--objective" in p.stdout


@pytest.mark.slow
def test_default_preset_on_builtin_corpus(tmp_path, monkeypatch):
    """`attnkit train --steps 50`: everything else default (char-gpt, built-in corpus,
    runs/char-gpt in the working directory)."""
    monkeypatch.chdir(tmp_path)
    r = cli("train", "--steps", 50)
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "runs" / "char-gpt"
    assert read_trainer_state(out / "last")["step"] == 50 and (out / "best").is_dir()
    assert "built-in corpus" in r.stdout and "339 documents" in r.stdout
    sample = r.stdout.split(SAMPLE_RULE)[1]
    assert len(sample.strip()) >= 250  # the prompt + ~300 sampled characters
    assert (out / "data" / "train.bin").is_file() and (out / "loss_curve.png").is_file()


@pytest.mark.slow
def test_torchrun_ddp(tmp_path, corpus_file):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "attnkit.cli", "train", "--data", str(corpus_file), "--steps", "3", *TINY,
           "--out", str(out), "--sample-chars", "20", "--device", "cpu"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count("done: step 3 of 3") == 1  # rank 0 only
    assert "x 2 processes (ddp)" in p.stdout
    assert read_trainer_state(out / "last")["world_size"] == 2


def test_viz_on_a_trained_run(trained, tmp_path):
    """`attnkit viz` (PNG + HTML) and the explorer's API on what `attnkit train` wrote: the run
    directory itself (its best/) as well as a checkpoint inside it."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from attnkit.viz.loading import load_for_viz
    from attnkit.viz.server import create_app

    out, _ = trained
    text = "The with statement"
    r = cli("viz", "-c", out, "--text", text, "--png", tmp_path / "png", "--html",
            tmp_path / "a.html", "--head", 1)
    assert r.exit_code == 0, r.output
    for name in ("head", "grid", "rollout", "head_stats"):
        assert (tmp_path / "png" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "<script" in (tmp_path / "a.html").read_text()
    model, tok = load_for_viz(out)
    assert not model.training and tok.encode(text) == load_for_viz(out / "last")[1].encode(text)
    with TestClient(create_app(model, tok), base_url="http://127.0.0.1") as client:
        info = client.get("/api/info").json()
        assert (info["n_layers"], info["n_heads"]) == (1, 2)
        data = client.post("/api/attention", json={"text": text}).json()
        w = torch.tensor(data["kinds"]["self"]["weights"], dtype=torch.float64)
        n = len(data["tokens"])
        assert w.shape == (1, 2, n, n) and float(w.triu(1).abs().max()) == 0.0
        torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, n, dtype=torch.float64),
                                   atol=1e-3, rtol=0)
        assert client.post("/api/attention", json={"text": text, "heads": [2]}).status_code \
            in (400, 422)


def test_tensorboard_flag(tmp_path, corpus_file):
    """--tensorboard logs to OUT/tb, or (without the package) is a one-line error."""
    import importlib.util

    out = tmp_path / "tb-run"
    r = cli("train", "--data", corpus_file, "--steps", 2, *TINY, "--out", out, "--tensorboard",
            "--sample-chars", 0)
    if importlib.util.find_spec("tensorboard") is None:
        assert "pip install tensorboard" in error_line(r)
    else:
        assert r.exit_code == 0, r.stderr
        assert any((out / "tb").iterdir())


def test_resume_settings_keep_the_saved_model(trained):
    """On --resume, naming the same objective (flag or --set) keeps the saved preset and its
    model overrides; `train.resume=true` is the boolean, not a checkpoint path."""
    out, _ = trained
    for sets, flags in ((["train.resume=true"], {}), ([], {"resume": True}),
                        ([], {"resume": True, "objective": "causal"}),
                        (["objective=causal", "train.resume=yes"], {})):
        res = resolve_run(None, sets, {"out": str(out), **flags})
        assert res.resume and res.train.resume is True, (sets, flags)
        assert res.run.model_preset == "char-gpt"
        assert res.run.model == {"n_layers": 1, "d_model": 32, "n_heads": 2}, (sets, flags)


def test_resume_with_more_steps_rederives_step_defaults(trained, tmp_path):
    import shutil

    out, _ = trained  # 3 steps: warmup 0, no periodic evaluation
    res = resolve_run(None, [], {"out": str(out), "resume": True, "steps": 400})
    assert (res.train.warmup_steps, res.train.eval_every, res.train.save_every) == (40, 50, 50)
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    run = json.loads((copy / "run.json").read_text())
    run["train"]["eval_every"] = 7  # chosen by the user: kept
    (copy / "run.json").write_text(json.dumps(run))
    res = resolve_run(None, [], {"out": str(copy), "resume": True, "steps": 400})
    assert (res.train.warmup_steps, res.train.eval_every) == (40, 7)
    same = resolve_run(None, [], {"out": str(out), "resume": True})
    assert same.train.steps == 3 and same.train.eval_every == 0
