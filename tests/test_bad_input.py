"""The bad-input suite: one table of what users get wrong, across the API and the CLI.

Every case must end in one error, on one line, that names the bad value and says what is
valid; a command exits with code 2 and prints no traceback; no file that existed before is
lost or changed; and nothing is ever unpickled (the pickles here create a marker file when
loaded, and the marker must never appear).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from attnkit.attention import (
    KVCache,
    LinearAttention,
    MultiHeadAttention,
    attend,
    linear_attention,
    masks,
)
from attnkit.cli import app
from attnkit.data import CharTokenizer, builtin_documents, load_documents
from attnkit.generate import generate
from attnkit.interop.hf import load_hf
from attnkit.models import BertConfig, BertForMaskedLM, CausalLM, CausalLMConfig, Seq2SeqConfig
from attnkit.models.registry import build_model
from attnkit.models.seq2seq import Seq2SeqLM
from attnkit.models.vit import ViTConfig, ViTForImageClassification
from attnkit.sampling import GenerationConfig
from attnkit.train.checkpoint import load_model, save_checkpoint
from attnkit.train.config import TrainConfig

TINY = ["--set", "model.n_layers=1", "--set", "model.d_model=32", "--set", "model.n_heads=2"]


class _Bomb:
    """Unpickling this creates ``marker``: the proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def cli(*args: Any):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Read-only inputs shared by the cases: a trained run, its Hugging Face export, a RoPE
    checkpoint, bad corpora and disguised pickles."""
    root = tmp_path_factory.mktemp("bad-input")
    e = SimpleNamespace(root=root, marker=root.parent / "UNPICKLED")
    e.corpus = root / "corpus.txt"
    e.corpus.write_text("\n\n".join(d.text for d in builtin_documents()[:12])[:24_000])
    e.run = root / "run"
    r = cli("train", "--data", e.corpus, "--steps", 2, *TINY, "--out", e.run,
            "--sample-chars", 0)
    assert r.exit_code == 0, r.output
    e.hf = root / "hf"
    assert cli("convert", e.run, e.hf).exit_code == 0
    tok = CharTokenizer.train([e.corpus.read_text()])
    cfg = CausalLMConfig(vocab_size=tok.vocab_size, max_seq_len=32, d_model=16, n_layers=1,
                         n_heads=2, position="rope")
    e.rope = save_checkpoint(root / "rope", CausalLM(cfg), tokenizer=tok)
    small = CausalLMConfig(vocab_size=20, max_seq_len=32, d_model=16, n_layers=1, n_heads=2)
    e.mismatched = save_checkpoint(root / "mismatched", CausalLM(small), tokenizer=tok)
    e.empty = root / "empty.txt"
    e.empty.write_text("   \n\n")
    e.binary = root / "binary.bin"
    e.binary.write_bytes(bytes(range(256)) * 64)
    e.latin1 = root / "latin1.txt"
    e.latin1.write_bytes(("caf\xe9 au lait. " * 200).encode("latin-1"))
    e.bad_jsonl = root / "bad.jsonl"
    e.bad_jsonl.write_text('{"text": "fine"}\n{not json\n')
    e.pickle = pickle.dumps(_Bomb(e.marker))
    e.torch_pickle = root / "bomb.pt"
    torch.save({"weight": _Bomb(e.marker)}, e.torch_pickle)
    e.cfg_bool_lr = root / "lr.toml"
    e.cfg_bool_lr.write_text("[train]\nlr = true\n")
    e.cfg_float_int = root / "steps.toml"
    e.cfg_float_int.write_text("[data]\nseq_len = 2.5\n")
    e.a_file = root / "a_file.txt"
    e.a_file.write_text("keep me\n")
    return e


def test_the_pickles_are_real(env, tmp_path):
    """The guard of the suite: loading these files *would* run code (create the marker)."""
    marker = tmp_path / "m"
    pickle.loads(pickle.dumps(_Bomb(marker)))
    assert marker.exists()
    torch.save({"w": _Bomb(marker.with_suffix(".2"))}, tmp_path / "t.pt")
    torch.load(tmp_path / "t.pt", weights_only=False)
    assert marker.with_suffix(".2").exists()


# ---- helpers for the cases -----------------------------------------------------------------


def copy(src: Path, tmp: Path, name: str = "copy") -> Path:
    dst = tmp / name
    shutil.copytree(src, dst)
    return dst


def with_file(src: Path, tmp: Path, rel: str, data: bytes | str | Callable[[Path], None]
              ) -> Path:
    """A copy of ``src`` whose file ``rel`` is replaced by ``data`` (or edited by it)."""
    d = copy(src, tmp)
    f = d / rel
    if callable(data):
        data(f)
    elif isinstance(data, bytes):
        f.write_bytes(data)
    else:
        f.write_text(data)
    return d


def truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def edit_json(**changes: Any) -> Callable[[Path], None]:
    def edit(f: Path) -> None:
        d = json.loads(f.read_text())
        d.update(changes)
        f.write_text(json.dumps(d))
    return edit


def edit_model_config(**changes: Any) -> Callable[[Path], None]:
    def edit(f: Path) -> None:
        d = json.loads(f.read_text())
        d["model"].update(changes)
        f.write_text(json.dumps(d))
    return edit


def _no_validation_split(f: Path) -> None:
    """The run's settings as if it had trained on every document."""
    d = json.loads(f.read_text())
    d["data"]["val_fraction"] = 0.0
    f.write_text(json.dumps(d))


def tiny_lm(**kw: Any) -> CausalLM:
    return CausalLM(CausalLMConfig(**{**dict(vocab_size=50, max_seq_len=16, d_model=16,
                                             n_layers=1, n_heads=2), **kw})).eval()


def tiny_seq2seq() -> Seq2SeqLM:
    return Seq2SeqLM(Seq2SeqConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                                   head_dim=8, dropout=0.0)).eval()


def qkv(lq: int = 4, lk: int = 4):
    return torch.randn(1, 2, lq, 8), torch.randn(1, 2, lk, 8), torch.randn(1, 2, lk, 8)


def _nan_q():
    q, k, v = qkv()
    q[0, 1, 2, 3] = float("nan")
    return attend(q, k, v, check_finite=True)


# ---- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[Any, Path], Any]  # (env, tmp) -> a CLI result, or raises (API)
    want: tuple[str, ...]  # substrings of the one-line message
    cli: bool = True
    exc: type[BaseException] = ValueError


def C(id_: str, *args: Any, want: tuple[str, ...]) -> Case:
    """A CLI case: ``attnkit ARGS``; callables in ``args`` get ``(env, tmp)``."""
    return Case(id_, lambda e, t: cli(*(a(e, t) if callable(a) else a for a in args)), want)


def A(id_: str, fn: Callable[[Any, Path], Any], *want: str, exc: type = ValueError) -> Case:
    """An API case."""
    return Case(id_, fn, want, cli=False, exc=exc)


def run(e, t):
    return e.run


def hf(e, t):
    return e.hf


def out(e, t):
    return t / "out"


CASES = [
    # -- attention and masks
    A("attend-3d-query", lambda e, t: attend(torch.randn(2, 4, 8), *qkv()[1:]), "q must be 4-D",
      "(2, 4, 8)"),
    A("attend-check-finite", lambda e, t: _nan_q(), "q has 1 non-finite value",
      "nan at index (0, 1, 2, 3)"),
    A("attend-dropout", lambda e, t: attend(*qkv(), dropout_p=1.5), "dropout_p", "[0, 1)",
      "1.5"),
    A("attend-unknown-backend", lambda e, t: attend(*qkv(), backend="fast"), "'fast'",
      "valid: 'auto'"),
    A("mha-wrong-width", lambda e, t: MultiHeadAttention(8, 2)(torch.randn(1, 5, 7)),
      "x must be (B, L, 8), got (1, 5, 7)"),
    A("mha-token-ids", lambda e, t: MultiHeadAttention(8, 2)(torch.ones(1, 3, 8,
      dtype=torch.long)), "x must be a floating-point tensor", "torch.int64", exc=TypeError),
    A("mha-unknown-backend", lambda e, t: MultiHeadAttention(8, 2, backend="fastest"),
      "unknown backend 'fastest'", "'sdpa'"),
    A("linear-attention-3d", lambda e, t: linear_attention(*(x[0] for x in qkv())),
      "q must be 4-D", "(2, 4, 8)"),
    A("linear-attention-chunk", lambda e, t: LinearAttention(chunk_size=0),
      "chunk_size must be a positive int, got 0"),
    A("window-negative", lambda e, t: masks.sliding_window(-1), "left must be a non-negative "
      "int, got -1"),
    A("kv-cache-absurd", lambda e, t: KVCache(1, 8, 10**12, 64), "KVCache of 1,000,000,000,000 "
      "positions", "more than the", "available"),
    # -- configs
    A("heads-not-dividing", lambda e, t: CausalLMConfig(vocab_size=10, max_seq_len=8,
      d_model=100, n_layers=1, n_heads=3), "d_model (100) is not divisible by n_heads (3)",
      "1, 2, 4, 5, 10", "head_dim"),
    A("kv-heads-not-dividing", lambda e, t: CausalLMConfig(vocab_size=10, max_seq_len=8,
      d_model=12, n_layers=1, n_heads=4, n_kv_heads=3), "n_kv_heads (3)",
      "valid n_kv_heads: 1, 2, 4"),
    A("bert-zero-heads", lambda e, t: BertConfig(n_heads=0), "n_heads must be a positive int, "
      "got 0"),
    A("dropout-out-of-range", lambda e, t: CausalLMConfig(vocab_size=10, max_seq_len=8,
      d_model=8, n_layers=1, n_heads=2, dropout=1.5), "dropout", ">= 0 and < 1", "1.5"),
    A("rope-odd-head-dim", lambda e, t: CausalLMConfig(vocab_size=10, max_seq_len=8,
      d_model=12, n_layers=1, n_heads=4, position="rope"), "head_dim must be even, got 3"),
    A("bool-as-int", lambda e, t: CausalLMConfig(vocab_size=10, max_seq_len=True, d_model=8,
      n_layers=1, n_heads=2), "max_seq_len must be a positive int, got True"),
    A("train-lr-bool", lambda e, t: TrainConfig(lr=True), "lr must be a finite number > 0, "
      "got True"),
    A("model-too-big-to-build", lambda e, t: build_model(CausalLMConfig(
      vocab_size=10, max_seq_len=10**12, d_model=64, n_layers=1, n_heads=2)),
      "pos_emb.emb.weight (1000000000000, 64)", "more than the"),
    # -- models and generation
    A("token-id-too-large", lambda e, t: tiny_lm()(torch.tensor([[1, 2, 57]])),
      "token id 57", "vocab_size=50", "0..49"),
    A("token-id-negative", lambda e, t: tiny_lm()(torch.tensor([[1, -1]])), "token id -1"),
    A("empty-input-ids", lambda e, t: tiny_lm()(torch.zeros(2, 0, dtype=torch.long)),
      "input_ids is empty", "(2, 0)"),
    A("float-input-ids", lambda e, t: tiny_lm()(torch.zeros(1, 3)), "integer token ids",
      "torch.float32"),
    A("labels-out-of-range", lambda e, t: tiny_lm()(torch.tensor([[1, 2]]),
      labels=torch.tensor([[1, 99]])), "labels holds token id 99", "-100 (ignored)"),
    A("bert-token-type-out-of-range", lambda e, t: BertForMaskedLM(BertConfig.preset(
      "bert-tiny", vocab_size=30)).eval()(torch.tensor([[1, 2]]), token_type_ids=torch.tensor(
          [[0, 2]])), "token_type_ids holds id 2", "type_vocab_size=2", "0..1"),
    A("vit-label-out-of-range", lambda e, t: ViTForImageClassification(ViTConfig(
      image_size=8, patch_size=4, d_model=16, n_layers=1, n_heads=2, d_ff=32, num_labels=3)
      ).eval()(torch.randn(2, 3, 8, 8), labels=torch.tensor([0, 3])), "labels holds id 3",
      "num_labels=3"),
    A("seq2seq-decoder-id", lambda e, t: tiny_seq2seq()(torch.tensor([[1, 2]]),
      decoder_input_ids=torch.tensor([[0, 45]])), "decoder_input_ids holds token id 45",
      "vocab_size=40"),
    A("generate-empty-prompt", lambda e, t: generate(tiny_lm(), [[1, 2], []]),
      "prompt 1 of 2 is empty"),
    A("generate-pad-outside-vocab", lambda e, t: generate(tiny_lm(), [[1]], GenerationConfig(
      pad_token_id=50)), "pad_token_id=50", "0..49"),
    A("generate-inf-temperature", lambda e, t: GenerationConfig(temperature=float("inf")),
      "temperature", "finite", "inf"),
    A("generate-bool-top-k", lambda e, t: GenerationConfig(top_k=True), "top_k",
      "positive int, got True"),
    A("generate-kv-cache-too-big", lambda e, t: generate(tiny_lm(position="rope"), [[1]],
      GenerationConfig(max_new_tokens=10**12)), "KVCache of 1,000,000,000,001 positions",
      "max_new_tokens"),
    # -- data and checkpoints (API)
    A("corpus-not-utf8", lambda e, t: load_documents(e.latin1), "latin1.txt",
      "not valid UTF-8 at byte offset 3"),
    A("corpus-binary", lambda e, t: load_documents(e.binary), "binary.bin", "not valid UTF-8"),
    A("checkpoint-truncated-weights", lambda e, t: load_model(with_file(
      e.run / "last", t, "model.safetensors", truncate)), "model.safetensors",
      "corrupt or unreadable safetensors"),
    A("checkpoint-pickle-weights", lambda e, t: load_model(with_file(
      e.run / "last", t, "model.safetensors", e.torch_pickle.read_bytes())),
      "looks like a pickle", "never loads"),
    A("checkpoint-absurd-vocab", lambda e, t: load_model(with_file(
      e.run / "last", t, "config.json", edit_model_config(vocab_size=10**12))),
      "cannot build the model", "tok_emb.weight (1000000000000, 32)", "more than the"),
    A("hf-random-bytes", lambda e, t: load_hf(with_file(e.hf, t, "model.safetensors",
      bytes(range(256)) * 4)), "model.safetensors", "corrupt or unreadable"),
    A("hf-config-not-json", lambda e, t: load_hf(with_file(e.hf, t, "config.json",
      "{model_type: gpt2")), "config.json is not valid JSON"),
    A("hf-wrong-model-type", lambda e, t: load_hf(with_file(e.hf, t, "config.json",
      edit_json(model_type="gpt9"))), "unsupported model_type 'gpt9'", "supported:"),
    # -- attnkit train
    C("train-device-cuda", "train", "--device", "cuda", "--out", out,
      want=("device 'cuda'", "no CUDA device", "valid here: auto, cpu")),
    C("train-device-garbage", "train", "--device", "gpu0", "--out", out,
      want=("'gpu0' is not a device name", "valid here")),
    C("train-huge-context", "train", "--data", lambda e, t: e.corpus, *TINY, "--set",
      "model.max_seq_len=100000000000", "--out", out,
      want=("model.max_seq_len=100000000000", "pos_emb.emb.weight (100000000000, 32)",
            "more than the", "available on cpu")),
    C("train-config-file-bool-lr", "train", "-c", lambda e, t: e.cfg_bool_lr, "--out", out,
      want=("train.lr: expected a number, got True",)),
    C("train-config-file-float-int", "train", "-c", lambda e, t: e.cfg_float_int, "--out",
      out, want=("data.seq_len: expected an integer or none, got 2.5",)),
    C("train-out-is-a-file", "train", "--out", lambda e, t: e.a_file,
      want=("a_file.txt: it is a file", "--out must be a directory")),
    C("train-empty-corpus", "train", "--data", lambda e, t: e.empty, "--out", out,
      want=("empty corpus", "empty.txt")),
    C("train-binary-corpus", "train", "--data", lambda e, t: e.binary, "--out", out,
      want=("binary.bin", "not valid UTF-8")),
    C("train-bad-jsonl", "train", "--data", lambda e, t: e.bad_jsonl, "--out", out,
      want=("bad.jsonl:2", "invalid JSON")),
    C("train-heads-not-dividing", "train", "--data", lambda e, t: e.corpus, *TINY, "--set",
      "model.n_heads=3", "--out", out, want=("d_model (32) is not divisible by n_heads (3)",)),
    C("train-steps-zero", "train", "--steps", 0, "--out", out,
      want=("steps must be a positive int, got 0",)),
    C("train-resume-step-not-int", "train", "--resume", "--out", lambda e, t: with_file(
      e.run, t, "last/trainer_state.json", edit_json(step="three")),
      want=("trainer_state.json", "field 'step' must be an int >= 0, got 'three'")),
    C("train-resume-state-not-object", "train", "--resume", "--out", lambda e, t: with_file(
      e.run, t, "last/trainer_state.json", "[1, 2]"),
      want=("trainer_state.json", "must hold a JSON object, got list")),
    C("train-resume-truncated-weights", "train", "--resume", "--out", lambda e, t: with_file(
      e.run, t, "last/model.safetensors", truncate),
      want=("model.safetensors", "corrupt or unreadable safetensors")),
    C("train-resume-pickled-optimizer", "train", "--resume", "--out", lambda e, t: with_file(
      e.run, t, "last/optimizer.safetensors", e.pickle),
      want=("optimizer.safetensors", "looks like a pickle")),
    # -- attnkit generate
    C("generate-unknown-characters", "generate", "-k", run, "日本語 ☃",
      want=("4 characters", "'日', '本', '語', '☃'", "--allow-unknown")),
    C("generate-tokenizer-of-another-model", "generate", "-k", lambda e, t: e.mismatched,
      "zebra", want=("the prompt encodes to token id", "vocab_size=20", "char tokenizer",
                     "another model")),
    C("generate-negative-temperature", "generate", "-k", run, "--temperature", -1, "x",
      want=("'--temperature'", "greater than or equal to 0", "got '-1'")),
    C("generate-top-p", "generate", "-k", run, "--top-p", 2, "x",
      want=("top_p", "<= 1", "got 2.0")),
    C("generate-repetition-penalty", "generate", "-k", run, "--repetition-penalty", 0, "x",
      want=("repetition_penalty", "> 0", "got 0.0")),
    C("generate-device-cuda", "generate", "-k", run, "--device", "cuda", "x",
      want=("device 'cuda'", "valid here")),
    C("generate-huge-kv-cache", "generate", "-k", lambda e, t: e.rope, "-n", 10**12, "x",
      want=("KVCache of", "more than the", "max_new_tokens")),
    C("generate-corrupt-hf-weights", "generate", "-k", lambda e, t: with_file(
      e.hf, t, "model.safetensors", bytes(100)), "x",
      want=("model.safetensors", "corrupt or unreadable")),
    C("generate-config-not-json", "generate", "-k", lambda e, t: with_file(
      e.run / "best", t, "config.json", b"\x00\x01garbage"), "x",
      want=("config.json", "not valid JSON")),
    C("generate-missing-checkpoint", "generate", "-k", lambda e, t: t / "nowhere", "x",
      want=("checkpoint not found", "nowhere")),
    # -- attnkit evaluate
    C("evaluate-seq-len-zero", "evaluate", "-k", run, "--seq-len", 0,
      want=("--seq-len 0 is outside 1..64", "max_seq_len")),
    C("evaluate-seq-len-huge", "evaluate", "-k", run, "--seq-len", 100000,
      want=("--seq-len 100000 is outside 1..64",)),
    C("evaluate-tokenizer-of-another-model", "evaluate", "-k", lambda e, t: e.mismatched,
      "--data", lambda e, t: e.corpus, want=("the evaluation text", "corpus.txt",
                                              "vocab_size=20", "another model")),
    C("evaluate-run-without-validation", "evaluate", "-k", lambda e, t: with_file(
      e.run, t, "run.json", _no_validation_split),
      want=("data.val_fraction=0", "no validation split", "--data")),
    C("evaluate-empty-data", "evaluate", "-k", run, "--data", lambda e, t: e.empty,
      want=("empty corpus",)),
    # -- attnkit convert
    C("convert-random-bytes", "convert", lambda e, t: with_file(
      e.hf, t, "model.safetensors", bytes(range(256)) * 8), out,
      want=("model.safetensors", "corrupt or unreadable")),
    C("convert-truncated", "convert", lambda e, t: with_file(
      e.hf, t, "model.safetensors", truncate), out,
      want=("model.safetensors", "corrupt or unreadable")),
    C("convert-pickle-only", "convert", lambda e, t: with_file(
      e.hf, t, "model.safetensors", lambda f: (f.unlink(), shutil.copy(
          e.torch_pickle, f.with_name("pytorch_model.bin")))), out,
      want=("only pickle weights (pytorch_model.bin)", "safetensors only")),
    C("convert-config-not-json", "convert", lambda e, t: with_file(
      e.hf, t, "config.json", "not json"), out, want=("config.json", "not valid JSON")),
    C("convert-wrong-model-type", "convert", "--from", "hf", lambda e, t: with_file(
      e.hf, t, "config.json", edit_json(model_type="gpt9")), out,
      want=("unsupported model_type 'gpt9'",)),
    C("convert-destination-is-a-file", "convert", hf, lambda e, t: e.a_file,
      want=("a_file.txt: it is a file", "must be a directory")),
    C("convert-destination-not-empty", "convert", hf, lambda e, t: e.run,
      want=("exists and is not empty", "--overwrite")),
    # -- attnkit viz
    C("viz-layer-out-of-range", "viz", "-c", run, "--layer", 99,
      want=("--layer 99", "out of range", "1 layers")),
    C("viz-kind-cross", "viz", "-c", run, "--kind", "cross",
      want=("--kind 'cross'", "['self']")),
    C("viz-png-is-a-file", "viz", "-c", run, "--png", lambda e, t: e.a_file,
      want=("--png", "a_file.txt: it is a file")),
    C("viz-pickle-only-hf", "viz", "-c", lambda e, t: with_file(
      e.hf, t, "model.safetensors", lambda f: (f.unlink(), f.with_name(
          "pytorch_model.bin").write_bytes(e.pickle))),
      want=("only pickle weights", "pytorch_model.bin")),
    # -- the rest
    C("embed-missing-model", "embed", "--model-dir", lambda e, t: t / "nope", "x",
      want=("nope",)),
    C("demo-heads", "demo", "--heads", 3, "--kv-heads", 2,
      want=("--heads 3 must be a multiple of --kv-heads 2",)),
    C("finetune-missing-data", "finetune", "--task", "classification", "--base", "bert-tiny",
      "--train", lambda e, t: t / "nope.csv", "--out", out,
      want=("data file not found", "nope.csv")),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def snapshot(env):
    return _snapshot(env.root)


def test_the_suite_is_large_and_covers_api_and_cli():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert sum(c.cli for c in CASES) >= 20 and sum(not c.cli for c in CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, env, snapshot, tmp_path):
    if case.cli:
        r = case.run(env, tmp_path)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
        assert "Traceback" not in r.stdout + r.stderr
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        message = lines[0]
    else:
        with pytest.raises(case.exc) as info:
            case.run(env, tmp_path)
        message = str(info.value)
        assert "\n" not in message.strip(), message
    for w in case.want:
        assert w in message, f"{w!r} not in {message!r}"
    assert _snapshot(env.root) == snapshot, "a file that existed before was lost or changed"
    assert not env.marker.exists(), "something was unpickled"


def test_allow_unknown_encodes_unknown_characters_as_unk(env):
    """The documented way past the unknown-character error: ``<unk>`` ids, a normal run."""
    r = cli("generate", "-k", env.run, "日本 ok", "--allow-unknown", "-n", 3, "--seed", 0,
            "--no-stream")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("日本 ok")
