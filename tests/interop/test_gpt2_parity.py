"""GPT-2 interop: attnkit matches transformers' GPT2LMHeadModel; checkpoints round-trip."""

from __future__ import annotations

import json

import pytest
import torch
from _causal_lm_parity import (
    TOL,
    assert_matches_hf,
    assert_round_trip,
    assert_save_hf_export,
    edit_weights,
    perturbed,
    reload_hf,
)
from safetensors.torch import load_file, save_file

from attnkit.interop.gpt2 import load_gpt2, save_gpt2
from attnkit.interop.hf import load_hf, save_hf
from attnkit.models.causal_lm import CausalLM, CausalLMConfig

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

V = 97
CONFIGS = {
    "2heads-tied": dict(n_embd=32, n_head=2, n_layer=2),
    "4heads-untied": dict(n_embd=32, n_head=4, n_layer=2, tie_word_embeddings=False),
    "8heads-inner-relu": dict(n_embd=48, n_head=8, n_layer=3, n_inner=80,
                              activation_function="relu"),
    "exact-gelu": dict(n_embd=24, n_head=3, n_layer=1, activation_function="gelu",
                       layer_norm_epsilon=1e-6),
}


def _hf_model(**kw):
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=32, initializer_range=0.1,
                                  bos_token_id=None, eos_token_id=None, **kw)
    return perturbed(transformers.GPT2LMHeadModel(cfg))


@pytest.fixture(params=list(CONFIGS))
def hf_dir(request, tmp_path):
    m = _hf_model(**CONFIGS[request.param])
    m.save_pretrained(tmp_path / "hf", safe_serialization=True)
    return tmp_path / "hf"


@torch.no_grad()
def test_logits_hidden_states_attentions_match(hf_dir):
    ref = reload_hf(hf_dir)
    ours = load_gpt2(hf_dir)
    assert ours.config.tie_embeddings == ref.config.tie_word_embeddings
    assert_matches_hf(ours, ref, V)


def test_round_trip_is_exact_and_hf_loads_our_export(hf_dir, tmp_path):
    assert_round_trip(load_gpt2, save_gpt2, hf_dir, tmp_path / "out", V)


@torch.no_grad()
def test_attnkit_model_exports_via_save_hf(tmp_path):
    m = CausalLM(CausalLMConfig.preset("gpt2-tiny", tie_embeddings=False, init_std=0.1)).eval()
    back = assert_save_hf_export(m, tmp_path / "gpt2", L=12)
    assert json.loads((tmp_path / "gpt2" / "config.json").read_text())["model_type"] == "gpt2"
    # writing again into the existing directory replaces the files in place
    save_hf(back, tmp_path / "gpt2")
    assert load_hf(tmp_path / "gpt2").config == m.config


def test_unprefixed_keys_and_mask_buffers_are_accepted(tmp_path):
    """The original OpenAI export: no ``transformer.`` prefix, ``attn.bias`` buffers."""
    m = _hf_model(n_embd=16, n_head=2, n_layer=2)
    m.save_pretrained(tmp_path, safe_serialization=True)
    state = load_file(tmp_path / "model.safetensors")
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ids = torch.randint(0, V, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(load_gpt2(tmp_path)(ids).logits, m(ids).logits, **TOL)


def test_sharded_checkpoint(tmp_path):
    m = _hf_model(n_embd=32, n_head=4, n_layer=2)
    m.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ids = torch.randint(0, V, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(load_gpt2(tmp_path)(ids).logits, m(ids).logits, **TOL)


# ---- mapping errors -------------------------------------------------------------------------


@pytest.fixture
def small_dir(tmp_path):
    _hf_model(n_embd=16, n_head=2, n_layer=1).save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path


def test_missing_key_is_named(small_dir):
    edit_weights(small_dir, lambda s: s.pop("transformer.h.0.mlp.c_fc.bias"))
    with pytest.raises(ValueError, match=r"missing keys \(1\): transformer\.h\.0\.mlp\.c_fc\.bias"):
        load_gpt2(small_dir)


def test_unexpected_key_is_named(small_dir):
    edit_weights(small_dir,
                 lambda s: s.update({"transformer.h.0.attn.q_attn.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): transformer\.h\.0\.attn\.q_attn"):
        load_gpt2(small_dir)


def test_shape_mismatch_is_named(small_dir):
    edit_weights(small_dir, lambda s: s.update({"transformer.ln_f.weight": torch.ones(17)}))
    msg = r"transformer\.ln_f\.weight: expected \(16,\), got \(17,\)"
    with pytest.raises(ValueError, match=msg):
        load_gpt2(small_dir)


def test_all_problems_in_one_error(small_dir):
    def edit(s):
        s.pop("transformer.wpe.weight")
        s["extra.weight"] = torch.zeros(1)
        s["transformer.h.0.ln_1.bias"] = torch.zeros(3)

    edit_weights(small_dir, edit)
    with pytest.raises(ValueError) as e:
        load_gpt2(small_dir)
    for name in ("transformer.wpe.weight", "extra.weight", "transformer.h.0.ln_1.bias"):
        assert name in str(e.value)


def test_unsupported_model_type(small_dir):
    cfg = json.loads((small_dir / "config.json").read_text())
    (small_dir / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))
    with pytest.raises(ValueError, match="gpt_neox"):
        load_hf(small_dir)
    with pytest.raises(ValueError, match="gpt_neox"):
        load_gpt2(small_dir)


def test_unsupported_config_values_are_listed(small_dir):
    cfg = json.loads((small_dir / "config.json").read_text())
    cfg.update(activation_function="quick_gelu", scale_attn_by_inverse_layer_idx=True)
    (small_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="quick_gelu") as e:
        load_gpt2(small_dir)
    assert "scale_attn_by_inverse_layer_idx" in str(e.value)


def test_pickle_weights_are_refused(small_dir):
    (small_dir / "model.safetensors").rename(small_dir / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        load_hf(small_dir)


def test_missing_config_keys_are_listed(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8}))
    with pytest.raises(ValueError, match="n_layer"):
        load_hf(tmp_path)


def test_incompatible_model_cannot_be_saved_as_gpt2(tmp_path):
    m = CausalLM(CausalLMConfig.preset("gpt2-tiny", n_kv_heads=2, bias=False))
    with pytest.raises(ValueError, match="n_kv_heads") as e:
        save_gpt2(m, tmp_path / "x")
    assert "bias" in str(e.value) and not (tmp_path / "x").exists()
