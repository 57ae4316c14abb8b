"""Checkpoint directory: round trips, tied weights, atomic replace, clear errors, no pickle."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import attnkit
from attnkit.models import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    CausalLM,
    CausalLMConfig,
    Seq2SeqConfig,
    Seq2SeqLM,
)
from attnkit.models.registry import architecture_of, build_model
from attnkit.train import checkpoint as ck
from attnkit.train.checkpoint import (
    CheckpointError,
    load_model,
    load_training_state,
    read_trainer_state,
    save_checkpoint,
    tokenizer_dir,
)
from attnkit.train.optim import WarmupCosine, make_optimizer


def tiny_lm(**kw) -> CausalLM:
    cfg = dict(vocab_size=50, max_seq_len=16, d_model=32, n_layers=2, n_heads=2, d_ff=64)
    return CausalLM(CausalLMConfig(**{**cfg, **kw}))


def tiny_bert_cfg() -> BertConfig:
    return BertConfig(vocab_size=60, max_position=16, d_model=32, n_layers=1, n_heads=2,
                      d_ff=64, num_labels=3)


def tiny_s2s() -> Seq2SeqLM:
    return Seq2SeqLM(Seq2SeqConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=2, d_ff=64,
                                   head_dim=16, dropout=0.0))


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


class Tok:
    """Stand-in tokenizer: only ``save(directory)`` matters to the checkpoint."""

    def __init__(self, fail: bool = False):
        self.fail = fail

    def save(self, directory):
        Path(directory, "vocab.json").write_text('{"a": 0}')
        if self.fail:
            raise RuntimeError("disk full (simulated)")


# ---- round trips -----------------------------------------------------------------------------


def test_causal_lm_tied_round_trip(tmp_path):
    model = tiny_lm()
    save_checkpoint(tmp_path / "ck", model, train_config={"lr": 1.0})
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "lm_head.weight" not in keys and "tok_emb.weight" in keys  # stored once
    assert json.loads(meta["attnkit.tied"]) == {"lm_head.weight": "tok_emb.weight"}
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["model"] == model.config.to_dict() and cfg["train"] == {"lr": 1.0}
    assert cfg["architecture"] == "CausalLM" and cfg["attnkit_version"] == attnkit.__version__

    loaded = load_model(tmp_path / "ck")
    assert isinstance(loaded, CausalLM) and not loaded.training
    assert loaded.lm_head.weight is loaded.tok_emb.weight  # still tied
    assert_same_state(model, loaded)
    x = torch.randint(50, (2, 8))
    assert torch.equal(model.eval()(x).logits, loaded(x).logits)


@pytest.mark.parametrize("make", [
    lambda: tiny_lm(position="rope", norm="rmsnorm", activation="swiglu", bias=False,
                    tie_embeddings=False),
    lambda: BertForMaskedLM(tiny_bert_cfg()),
    lambda: BertForSequenceClassification(tiny_bert_cfg()),
    tiny_s2s,
], ids=["llama-untied", "bert-mlm", "bert-seqcls", "seq2seq"])
def test_family_round_trips(tmp_path, make):
    model = make()
    save_checkpoint(tmp_path / "ck", model)
    loaded = load_model(tmp_path / "ck")
    assert type(loaded) is type(model)
    assert architecture_of(loaded) == architecture_of(model)
    assert_same_state(model, loaded)


def test_registry_builds_default_and_named_architectures():
    cfg = tiny_bert_cfg().to_dict()
    assert type(build_model(cfg)) is BertForMaskedLM
    assert type(build_model(cfg, "BertForSequenceClassification")) is \
        BertForSequenceClassification
    with pytest.raises(ValueError, match="architecture 'Nope'.*valid"):
        build_model(cfg, "Nope")
    with pytest.raises(ValueError, match="unknown model family 'gan'"):
        build_model({"family": "gan"})


def test_bf16_weights_load_in_bf16(tmp_path):
    model = tiny_lm().to(torch.bfloat16)
    save_checkpoint(tmp_path / "ck", model)
    loaded = load_model(tmp_path / "ck")
    assert loaded.tok_emb.weight.dtype == torch.bfloat16
    assert_same_state(model, loaded)


def test_training_state_round_trip(tmp_path):
    model = tiny_lm()
    opt = make_optimizer(model, 1e-2, weight_decay=0.1)
    sched = WarmupCosine(opt, warmup_steps=2, total_steps=10, min_lr=1e-3)
    for _ in range(3):
        x = torch.randint(50, (2, 8))
        model(x, labels=x).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    torch.manual_seed(123)
    save_checkpoint(tmp_path / "ck", model, opt, sched, {"step": 3, "data": {"pos": 7}},
                    train_config={"steps": 10}, tokenizer=Tok())
    expected_rand = torch.rand(3)

    model2 = tiny_lm()
    opt2 = make_optimizer(model2, 1e-2, weight_decay=0.1)
    sched2 = WarmupCosine(opt2, warmup_steps=2, total_steps=10, min_lr=1e-3)
    torch.manual_seed(999)
    state = load_training_state(tmp_path / "ck", model2, opt2, sched2)
    assert torch.equal(torch.rand(3), expected_rand)  # torch RNG restored
    assert state["step"] == 3 and state["data"] == {"pos": 7}
    assert_same_state(model, model2)
    assert sched2.state_dict() == sched.state_dict()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        for k, v in s1["state"][i].items():
            assert torch.equal(v, s2["state"][i][k]), (i, k)
    assert (tokenizer_dir(tmp_path / "ck") / "vocab.json").is_file()
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["tokenizer"]["class"] \
        .endswith("Tok")
    # trainer_state.json is plain JSON with encoded RNG states
    ts = read_trainer_state(tmp_path / "ck")
    assert {"torch_cpu", "python", "numpy"} <= set(ts["rng"]) and "scheduler" in ts


# ---- atomic writes ---------------------------------------------------------------------------


def test_failed_write_leaves_old_checkpoint_intact(tmp_path):
    old, new = tiny_lm(), tiny_lm()
    save_checkpoint(tmp_path / "ck", old, trainer_state={"step": 1})
    with pytest.raises(RuntimeError, match="simulated"):  # dies after the weights are written
        save_checkpoint(tmp_path / "ck", new, trainer_state={"step": 2}, tokenizer=Tok(True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp dir, no .old
    assert read_trainer_state(tmp_path / "ck")["step"] == 1
    assert_same_state(old, load_model(tmp_path / "ck"))


def test_crash_between_renames_falls_back_to_old(tmp_path, monkeypatch):
    old, new = tiny_lm(), tiny_lm()
    save_checkpoint(tmp_path / "ck", old, trainer_state={"step": 1})
    real, calls = ck.os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # old -> ck.old done, tmp -> ck "crashes"
            raise OSError("power cut (simulated)")
        real(src, dst)

    monkeypatch.setattr(ck.os, "replace", flaky)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path / "ck", new, trainer_state={"step": 2})
    monkeypatch.setattr(ck.os, "replace", real)
    assert not (tmp_path / "ck").exists() and (tmp_path / "ck.old").is_dir()
    with pytest.warns(UserWarning, match="interrupted"):
        assert_same_state(old, load_model(tmp_path / "ck"))
    save_checkpoint(tmp_path / "ck", new, trainer_state={"step": 2})  # recovers, cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert_same_state(new, load_model(tmp_path / "ck"))


def test_replace_existing_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "ck", tiny_lm(), trainer_state={"step": 1})
    newer = tiny_lm()
    save_checkpoint(tmp_path / "ck", newer, trainer_state={"step": 2})
    assert read_trainer_state(tmp_path / "ck")["step"] == 2
    assert_same_state(newer, load_model(tmp_path / "ck"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


# ---- errors ----------------------------------------------------------------------------------


def test_missing_checkpoint_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "nope")
    save_checkpoint(tmp_path / "ck", tiny_lm())
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="not an attnkit checkpoint"):
        load_model(tmp_path / "ck")


def test_corrupt_safetensors_names_the_file(tmp_path):
    save_checkpoint(tmp_path / "ck", tiny_lm())
    f = tmp_path / "ck" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt"):
        load_model(tmp_path / "ck")


def test_config_weights_mismatch_lists_keys(tmp_path):
    save_checkpoint(tmp_path / "ck", tiny_lm())
    cfg_path = tmp_path / "ck" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["d_ff"] = 96
    cfg["model"]["n_layers"] = 3
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "ck")
    msg = str(e.value)
    assert "model.safetensors does not match CausalLM" in msg
    assert "missing keys ['stack.layers.2.attn.out_proj.bias', " in msg
    assert "stack.layers.0.ffn.w1.weight: checkpoint (64, 32) vs model (96, 32)" in msg

    cfg["model"]["bogus"] = 1
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="bogus"):
        load_model(tmp_path / "ck")


def test_resume_into_a_different_model_config(tmp_path):
    save_checkpoint(tmp_path / "ck", tiny_lm())
    with pytest.raises(CheckpointError, match=r"d_ff \(checkpoint 64, model 96\)"):
        load_training_state(tmp_path / "ck", tiny_lm(d_ff=96))


def test_non_json_trainer_state_is_a_clear_error(tmp_path):
    with pytest.raises(TypeError, match="trainer_state is not JSON-serialisable"):
        save_checkpoint(tmp_path / "ck", tiny_lm(), trainer_state={"x": object()})
    assert not any(tmp_path.iterdir())


def test_no_pickle_in_the_package():
    """Checkpoints and everything else load without unpickling: no torch.load (not even with
    weights_only=True) and no pickle module use anywhere in attnkit's sources."""
    src = Path(attnkit.__file__).parent
    pattern = re.compile(r"torch\.load\s*\(|weights_only|^\s*(import|from)\s+(c?pickle|dill)\b"
                         r"|\bpickle\.(loads?|dumps?|Unpickler)\b", re.M)
    offenders = [f"{p.relative_to(src)}:{m.group(0).strip()}" for p in src.rglob("*.py")
                 for m in pattern.finditer(p.read_text())]
    assert offenders == []
