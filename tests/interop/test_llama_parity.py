"""LLaMA / Mistral interop: attnkit matches transformers; checkpoints round-trip."""

from __future__ import annotations

import json

import pytest
import torch
from _causal_lm_parity import (
    assert_matches_hf,
    assert_round_trip,
    assert_save_hf_export,
    edit_weights,
    perturbed,
    reload_hf,
)

from attnkit.interop.hf import load_hf, save_hf
from attnkit.interop.llama import load_llama, save_llama
from attnkit.models.causal_lm import CausalLM, CausalLMConfig

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

V = 101

BASE = dict(vocab_size=V, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64, initializer_range=0.1,
            bos_token_id=None, eos_token_id=None)
CONFIGS = {
    "mha-untied": dict(num_key_value_heads=4),
    "gqa2-tied-theta": dict(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500.0),
    "mqa-bias-headdim": dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True,
                             head_dim=12, rms_norm_eps=1e-5),
    "gqa2-linear-rope": dict(num_key_value_heads=2, num_attention_heads=8, hidden_size=48,
                             rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "mistral-window": dict(model_type="mistral", num_key_value_heads=2, sliding_window=4),
}


def _hf_model(model_type="llama", **kw):
    if model_type == "mistral":
        cfg = transformers.MistralConfig(**{**BASE, **kw})
        m = transformers.MistralForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**{**BASE, **kw})
        m = transformers.LlamaForCausalLM(cfg)
    return perturbed(m)


@pytest.fixture(params=list(CONFIGS))
def hf_dir(request, tmp_path):
    _hf_model(**CONFIGS[request.param]).save_pretrained(tmp_path / "hf", safe_serialization=True)
    return tmp_path / "hf"


@torch.no_grad()
def test_logits_hidden_states_attentions_match(hf_dir):
    ref = reload_hf(hf_dir)
    ours = load_hf(hf_dir)
    assert ours.config.n_kv_heads == ref.config.num_key_value_heads
    assert ours.config.sliding_window == getattr(ref.config, "sliding_window", None)
    assert_matches_hf(ours, ref, V)


def test_round_trip_is_exact_and_hf_loads_our_export(hf_dir, tmp_path):
    ours, ref = assert_round_trip(load_llama, save_llama, hf_dir, tmp_path / "out", V)
    assert type(ref).__name__ == ("MistralForCausalLM" if ours.config.sliding_window
                                  else "LlamaForCausalLM")


@pytest.mark.parametrize("overrides", [dict(), dict(n_kv_heads=1, tie_embeddings=True),
                                       dict(sliding_window=3)])
@torch.no_grad()
def test_attnkit_model_exports_via_save_hf(tmp_path, overrides):
    m = CausalLM(CausalLMConfig.preset("llama-tiny", init_std=0.1, **overrides)).eval()
    assert_save_hf_export(m, tmp_path / "llama", L=10)


@torch.no_grad()
def test_kv_cache_generation_matches_hf_generate(tmp_path):
    _hf_model(**CONFIGS["mistral-window"]).save_pretrained(tmp_path, safe_serialization=True)
    ref, ours = reload_hf(tmp_path), load_hf(tmp_path)
    prompt = torch.randint(0, V, (1, 5))
    want = ref.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    ids, caches, step = prompt, ours.new_caches(1, 13), prompt
    for _ in range(8):
        step = ours(step, caches=caches).logits[:, -1:].argmax(-1)
        ids = torch.cat([ids, step], dim=1)
    assert torch.equal(ids, want)


# ---- mapping errors -------------------------------------------------------------------------


@pytest.fixture
def small_dir(tmp_path):
    _hf_model(num_key_value_heads=2, num_hidden_layers=1).save_pretrained(
        tmp_path, safe_serialization=True)
    return tmp_path


def test_missing_key_is_named(small_dir):
    edit_weights(small_dir, lambda s: s.pop("model.layers.0.self_attn.k_proj.weight"))
    msg = r"missing keys \(1\): model\.layers\.0\.self_attn\.k_proj\.weight"
    with pytest.raises(ValueError, match=msg):
        load_llama(small_dir)


def test_unexpected_key_is_named(small_dir):
    edit_weights(small_dir,
                 lambda s: s.update({"model.layers.0.self_attn.q_norm.weight": torch.ones(8)}))
    msg = r"unexpected keys \(1\): model\.layers\.0\.self_attn\.q_norm\.weight"
    with pytest.raises(ValueError, match=msg):
        load_llama(small_dir)


def test_gqa_shape_mismatch_is_named(small_dir):
    # k_proj of a model with 4 KV heads where the config says 2
    edit_weights(small_dir, lambda s: s.update({"model.layers.0.self_attn.k_proj.weight":
                                                torch.zeros(32, 32)}))
    with pytest.raises(ValueError, match=r"k_proj\.weight: expected \(16, 32\), got \(32, 32\)"):
        load_llama(small_dir)


def test_unsupported_model_type_and_rope(small_dir):
    cfg = json.loads((small_dir / "config.json").read_text())
    (small_dir / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen3"}))
    with pytest.raises(ValueError, match="qwen3") as e:
        load_hf(small_dir)
    assert "llama" in str(e.value)  # lists what is supported
    rope = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}
    (small_dir / "config.json").write_text(json.dumps({**cfg, "rope_parameters": rope}))
    with pytest.raises(ValueError, match="yarn"):
        load_llama(small_dir)


def test_incompatible_model_cannot_be_saved_as_llama(tmp_path):
    m = CausalLM(CausalLMConfig.preset("llama-tiny", position="alibi", activation="gelu"))
    with pytest.raises(ValueError, match="no Hugging Face format"):
        save_hf(m, tmp_path / "x")
    with pytest.raises(ValueError, match="position") as e:
        save_llama(m, tmp_path / "x")
    assert "activation" in str(e.value) and not (tmp_path / "x").exists()
