"""GPT-2 interop: attnkit matches transformers' GPT2LMHeadModel; checkpoints round-trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from attnkit.interop.gpt2 import load_gpt2, save_gpt2
from attnkit.interop.hf import load_hf, save_hf
from attnkit.models.causal_lm import CausalLM, CausalLMConfig

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TOL = dict(atol=1e-4, rtol=0)

CONFIGS = {
    "2heads-tied": dict(n_embd=32, n_head=2, n_layer=2),
    "4heads-untied": dict(n_embd=32, n_head=4, n_layer=2, tie_word_embeddings=False),
    "8heads-inner-relu": dict(n_embd=48, n_head=8, n_layer=3, n_inner=80,
                              activation_function="relu"),
    "exact-gelu": dict(n_embd=24, n_head=3, n_layer=1, activation_function="gelu",
                       layer_norm_epsilon=1e-6),
}


def _hf_model(**kw):
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, initializer_range=0.1,
                                  bos_token_id=None, eos_token_id=None, **kw)
    m = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():  # non-trivial norm gains and biases
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def _reload_hf(directory):
    return transformers.AutoModelForCausalLM.from_pretrained(
        directory, attn_implementation="eager").eval()


def _batch(B=3, L=11, V=97):
    """Random ids with a left-padded row and a right-padded row."""
    ids = torch.randint(0, V, (B, L))
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, :4] = 0
    mask[2, 8:] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


@pytest.fixture(params=list(CONFIGS))
def hf_dir(request, tmp_path):
    m = _hf_model(**CONFIGS[request.param])
    m.save_pretrained(tmp_path / "hf", safe_serialization=True)
    return tmp_path / "hf"


@torch.no_grad()
def test_logits_hidden_states_attentions_match(hf_dir):
    ref = _reload_hf(hf_dir)
    ours = load_gpt2(hf_dir)
    assert ours.config.tie_embeddings == ref.config.tie_word_embeddings
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
    # no mask at all: HF's default arange positions
    torch.testing.assert_close(ours(ids).logits, ref(ids).logits, **TOL)


@torch.no_grad()
def test_round_trip_is_exact_and_hf_loads_our_export(hf_dir, tmp_path):
    ours = load_gpt2(hf_dir)
    save_gpt2(ours, tmp_path / "out")
    again = load_gpt2(tmp_path / "out")
    a, b = ours.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.config == ours.config
    ref = _reload_hf(tmp_path / "out")
    ids = torch.randint(0, 97, (2, 9))
    torch.testing.assert_close(ref(ids).logits, ours(ids).logits, **TOL)


@torch.no_grad()
def test_attnkit_model_exports_via_save_hf(tmp_path):
    m = CausalLM(CausalLMConfig.preset("gpt2-tiny", tie_embeddings=False, init_std=0.1)).eval()
    save_hf(m, tmp_path / "gpt2")
    assert json.loads((tmp_path / "gpt2" / "config.json").read_text())["model_type"] == "gpt2"
    ref = _reload_hf(tmp_path / "gpt2")
    ids = torch.randint(0, 256, (2, 12))
    torch.testing.assert_close(ref(ids).logits, m(ids).logits, **TOL)
    back = load_hf(tmp_path / "gpt2")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in m.state_dict().items())
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
    ids = torch.randint(0, 97, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(load_gpt2(tmp_path)(ids).logits, m(ids).logits, **TOL)


def test_sharded_checkpoint(tmp_path):
    m = _hf_model(n_embd=32, n_head=4, n_layer=2)
    m.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ids = torch.randint(0, 97, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(load_gpt2(tmp_path)(ids).logits, m(ids).logits, **TOL)


# ---- mapping errors -------------------------------------------------------------------------


@pytest.fixture
def small_dir(tmp_path):
    _hf_model(n_embd=16, n_head=2, n_layer=1).save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path


def _edit(directory, fn):
    state = load_file(directory / "model.safetensors")
    fn(state)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})


def test_missing_key_is_named(small_dir):
    _edit(small_dir, lambda s: s.pop("transformer.h.0.mlp.c_fc.bias"))
    with pytest.raises(ValueError, match=r"missing keys \(1\): transformer\.h\.0\.mlp\.c_fc\.bias"):
        load_gpt2(small_dir)


def test_unexpected_key_is_named(small_dir):
    _edit(small_dir, lambda s: s.update({"transformer.h.0.attn.q_attn.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): transformer\.h\.0\.attn\.q_attn"):
        load_gpt2(small_dir)


def test_shape_mismatch_is_named(small_dir):
    _edit(small_dir, lambda s: s.update({"transformer.ln_f.weight": torch.ones(17)}))
    msg = r"transformer\.ln_f\.weight: expected \(16,\), got \(17,\)"
    with pytest.raises(ValueError, match=msg):
        load_gpt2(small_dir)


def test_all_problems_in_one_error(small_dir):
    def edit(s):
        s.pop("transformer.wpe.weight")
        s["extra.weight"] = torch.zeros(1)
        s["transformer.h.0.ln_1.bias"] = torch.zeros(3)

    _edit(small_dir, edit)
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
