"""LLaMA / Mistral interop: attnkit matches transformers; checkpoints round-trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from attnkit.interop.hf import load_hf, save_hf
from attnkit.interop.llama import load_llama, save_llama
from attnkit.models.causal_lm import CausalLM, CausalLMConfig

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TOL = dict(atol=1e-4, rtol=0)
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
    with torch.no_grad():  # non-trivial norm gains and biases
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def _reload_hf(directory):
    return transformers.AutoModelForCausalLM.from_pretrained(
        directory, attn_implementation="eager").eval()


def _batch(B=3, L=11):
    """Random ids with a left-padded row and a right-padded row."""
    ids = torch.randint(0, V, (B, L))
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, 8:] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


@pytest.fixture(params=list(CONFIGS))
def hf_dir(request, tmp_path):
    _hf_model(**CONFIGS[request.param]).save_pretrained(tmp_path / "hf", safe_serialization=True)
    return tmp_path / "hf"


@torch.no_grad()
def test_logits_hidden_states_attentions_match(hf_dir):
    ref = _reload_hf(hf_dir)
    ours = load_hf(hf_dir)
    assert ours.config.n_kv_heads == ref.config.num_key_value_heads
    assert ours.config.sliding_window == getattr(ref.config, "sliding_window", None)
    ids, mask, pos = _batch()
    want = ref(ids, attention_mask=mask, position_ids=pos, output_hidden_states=True,
               output_attentions=True)
    got = ours(ids, attention_mask=mask, output_hidden_states=True, return_weights=True)
    real = mask.bool()  # padded query rows are arbitrary on both sides
    torch.testing.assert_close(got.logits[real], want.logits[real], **TOL)
    assert len(got.hidden_states) == len(want.hidden_states)
    for g, w in zip(got.hidden_states, want.hidden_states, strict=True):
        torch.testing.assert_close(g[real], w[real], **TOL)
    assert len(got.attentions) == len(want.attentions)
    for g, w in zip(got.attentions, want.attentions, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g.transpose(1, 2)[real], w.transpose(1, 2)[real], **TOL)
    torch.testing.assert_close(ours(ids).logits, ref(ids).logits, **TOL)


@torch.no_grad()
def test_round_trip_is_exact_and_hf_loads_our_export(hf_dir, tmp_path):
    ours = load_llama(hf_dir)
    save_llama(ours, tmp_path / "out")
    again = load_llama(tmp_path / "out")
    a, b = ours.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.config == ours.config
    ref = _reload_hf(tmp_path / "out")
    assert type(ref).__name__ == ("MistralForCausalLM" if ours.config.sliding_window
                                  else "LlamaForCausalLM")
    ids = torch.randint(0, V, (2, 9))
    torch.testing.assert_close(ref(ids).logits, ours(ids).logits, **TOL)


@pytest.mark.parametrize("overrides", [dict(), dict(n_kv_heads=1, tie_embeddings=True),
                                       dict(sliding_window=3)])
@torch.no_grad()
def test_attnkit_model_exports_via_save_hf(tmp_path, overrides):
    m = CausalLM(CausalLMConfig.preset("llama-tiny", init_std=0.1, **overrides)).eval()
    save_hf(m, tmp_path / "llama")
    ref = _reload_hf(tmp_path / "llama")
    ids = torch.randint(0, 256, (2, 10))
    torch.testing.assert_close(ref(ids).logits, m(ids).logits, **TOL)
    back = load_hf(tmp_path / "llama")
    assert back.config == m.config
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in m.state_dict().items())


@torch.no_grad()
def test_kv_cache_generation_matches_hf_generate(tmp_path):
    _hf_model(**CONFIGS["mistral-window"]).save_pretrained(tmp_path, safe_serialization=True)
    ref, ours = _reload_hf(tmp_path), load_hf(tmp_path)
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


def _edit(directory, fn):
    state = load_file(directory / "model.safetensors")
    fn(state)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})


def test_missing_key_is_named(small_dir):
    _edit(small_dir, lambda s: s.pop("model.layers.0.self_attn.k_proj.weight"))
    msg = r"missing keys \(1\): model\.layers\.0\.self_attn\.k_proj\.weight"
    with pytest.raises(ValueError, match=msg):
        load_llama(small_dir)


def test_unexpected_key_is_named(small_dir):
    _edit(small_dir, lambda s: s.update({"model.layers.0.self_attn.q_norm.weight": torch.ones(8)}))
    msg = r"unexpected keys \(1\): model\.layers\.0\.self_attn\.q_norm\.weight"
    with pytest.raises(ValueError, match=msg):
        load_llama(small_dir)


def test_gqa_shape_mismatch_is_named(small_dir):
    # k_proj of a model with 4 KV heads where the config says 2
    _edit(small_dir, lambda s: s.update({"model.layers.0.self_attn.k_proj.weight":
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
