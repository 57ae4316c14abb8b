"""CausalLM: config round trip, presets, masks, KV-cache decoding, padding, bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.attention.cache import KVCache, SlidingWindowCache
from attnkit.models.causal_lm import CausalLM, CausalLMConfig, CausalLMOutput

V = 256


def _model(preset: str = "gpt2-tiny", **overrides) -> CausalLM:
    # a larger init makes logits decisive, so greedy decoding has no near-ties
    overrides.setdefault("init_std", 0.2)
    return CausalLM(CausalLMConfig.preset(preset, **overrides)).eval()


DECODE_CASES = {
    "gpt2-tiny": dict(preset="gpt2-tiny"),
    "llama-tiny-gqa": dict(preset="llama-tiny", n_kv_heads=1),
    "llama-tiny-window": dict(preset="llama-tiny", sliding_window=4),
    "alibi": dict(preset="gpt2-tiny", position="alibi"),
}


# ---- config ---------------------------------------------------------------------------------


def test_config_json_round_trip(tmp_path):
    cfg = CausalLMConfig.preset("llama-tiny", rope_scaling={"type": "linear", "factor": 2.0},
                                sliding_window=8)
    assert CausalLMConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert CausalLMConfig.from_json(tmp_path / "c.json") == cfg
    assert cfg.to_dict()["family"] == "causal_lm"


def test_unknown_key_is_an_error():
    data = {**CausalLMConfig.preset("gpt2-tiny").to_dict(), "n_layer": 3}
    with pytest.raises(ValueError, match="n_layer"):
        CausalLMConfig.from_dict(data)


@pytest.mark.parametrize("bad, match", [
    (dict(position="xpos"), "position"), (dict(activation="tanh"), "activation"),
    (dict(rope_scaling={"type": "yarn", "factor": 2}), "rope_scaling"),
    (dict(sliding_window=0), "sliding_window"), (dict(backend="cuda"), "backend"),
    (dict(norm="batchnorm"), "norm"),
])
def test_invalid_config_values(bad, match):
    with pytest.raises(ValueError, match=match):
        CausalLMConfig.preset("gpt2-tiny", **bad)


def test_presets():
    assert set(CausalLMConfig.presets) >= {"gpt2-small", "gpt2-tiny", "llama-tiny", "char-gpt"}
    with torch.device("meta"):  # shapes only: no memory, no init cost
        gpt2 = CausalLM(CausalLMConfig.preset("gpt2-small"))
    assert gpt2.num_parameters() == 124_439_808  # the published GPT-2 small count
    llama = CausalLMConfig.preset("llama-tiny")
    assert (llama.position, llama.activation, llama.norm) == ("rope", "swiglu", "rmsnorm")
    assert llama.n_kv_heads < llama.n_heads
    char = CausalLMConfig.preset("char-gpt")
    assert (char.n_layers, char.n_heads, char.d_model, char.max_seq_len) == (4, 4, 128, 64)
    with pytest.raises(ValueError, match="vocab_size"):
        CausalLM(char)
    m = CausalLM(CausalLMConfig.preset("char-gpt", vocab_size=65))
    assert m(torch.randint(0, 65, (1, 64))).logits.shape == (1, 64, 65)
    with pytest.raises(ValueError, match="unknown causal_lm preset"):
        CausalLMConfig.preset("gpt5")


# ---- forward --------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    dict(), dict(position="rope"), dict(position="alibi"), dict(position="sinusoidal"),
    dict(position="none"), dict(norm_position="post"), dict(activation="swiglu", bias=False),
    dict(head_dim=8), dict(position="rope", rope_scaling={"type": "ntk", "factor": 4.0}),
])
def test_shapes(overrides):
    m = _model(**overrides)
    ids = torch.randint(0, V, (3, 9))
    out = m(ids, output_hidden_states=True, return_weights=True)
    assert isinstance(out, CausalLMOutput) and out.loss is None
    assert out.logits.shape == (3, 9, V)
    assert len(out.hidden_states) == m.config.n_layers + 1
    assert all(h.shape == (3, 9, 64) for h in out.hidden_states)
    assert len(out.attentions) == m.config.n_layers
    assert all(a.shape == (3, m.config.n_heads, 9, 9) for a in out.attentions)
    assert (m.stack.final_norm is None) == (m.config.norm_position == "post")


def test_attention_weights_are_causal_and_windowed():
    m = _model("llama-tiny", sliding_window=3)
    w = m(torch.randint(0, V, (2, 8)), return_weights=True).attentions[0]  # (B, H, L, L)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 8))
    q, k = torch.arange(8)[:, None], torch.arange(8)[None, :]
    outside = (k > q) | (q - k >= 3)  # HF Mistral: the 3 most recent keys, the query included
    assert (w[..., outside] == 0).all() and (w[..., ~outside] > 0).all()


def test_sliding_window_larger_than_sequence_is_causal():
    ids = torch.randint(0, V, (2, 10))
    a, b = _model("llama-tiny"), _model("llama-tiny", sliding_window=10)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(ids).logits, b(ids).logits)


def test_explicit_backend_matches_auto():
    ids = torch.randint(0, V, (2, 9))
    a, b = _model("llama-tiny"), _model("llama-tiny", backend="math")
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(ids).logits, b(ids).logits, atol=1e-5, rtol=1e-5)
    c = _model("llama-tiny", backend="linear")  # the configured backend really is used:
    c.load_state_dict(a.state_dict())            # linear attention gives other logits
    assert not torch.allclose(a(ids).logits, c(ids).logits, atol=1e-3)
    # weights requested: the reference path serves them whatever the configured backend
    out = _model("llama-tiny", backend="sdpa")(ids, return_weights=True)
    assert out.attentions[0].shape[-2:] == (9, 9)


def test_labels_give_shifted_cross_entropy():
    m = _model()
    ids = torch.randint(0, V, (2, 7))
    labels = ids.clone()
    labels[0, 3] = -100
    out = m(ids, labels=labels)
    logp = out.logits.log_softmax(-1)
    terms = [-logp[b, t, labels[b, t + 1]] for b in range(2) for t in range(6)
             if labels[b, t + 1] != -100]
    torch.testing.assert_close(out.loss, torch.stack(terms).mean())


def test_gradients_flow():
    m = _model("llama-tiny").train()
    ids = torch.randint(0, V, (2, 9))
    m(ids, labels=ids).loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ---- embeddings, parameters, init -----------------------------------------------------------


def test_tied_and_untied_embeddings():
    tied, untied = _model(tie_embeddings=True), _model(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_parameters() - tied.num_parameters() == V * 64
    assert "lm_head.weight" in dict(untied.named_parameters())
    assert "lm_head.weight" not in dict(tied.named_parameters())  # counted once


@pytest.mark.parametrize("preset, overrides", [
    ("gpt2-tiny", {}), ("gpt2-tiny", dict(tie_embeddings=False)), ("llama-tiny", {}),
    ("gpt2-tiny", dict(position="sinusoidal")),
])
def test_num_parameters(preset, overrides):
    m = CausalLM(CausalLMConfig.preset(preset, **overrides))
    assert m.num_parameters() == sum(p.numel() for p in m.parameters())
    emb = m.tok_emb.weight.numel() + (m.pos_emb.emb.weight.numel()
                                      if m.config.position == "learned" else 0)
    assert m.num_parameters(exclude_embeddings=True) == m.num_parameters() - emb


def test_flops_per_token_formula():
    m = CausalLM(CausalLMConfig.preset("gpt2-tiny"))
    c = m.config
    n = m.num_parameters(exclude_embeddings=True) + c.vocab_size * c.d_model  # + tied head
    assert m.flops_per_token(128) == 6 * n + 12 * c.n_layers * c.d_model * 128


def test_gpt2_init():
    cfg = CausalLMConfig(vocab_size=512, max_seq_len=32, d_model=128, n_layers=8, n_heads=4)
    m = CausalLM(cfg)
    std = lambda t: t.detach().std().item()  # noqa: E731
    assert math.isclose(std(m.tok_emb.weight), 0.02, rel_tol=0.05)
    assert math.isclose(std(m.stack.layers[0].attn.qkv.weight), 0.02, rel_tol=0.05)
    resid = 0.02 / math.sqrt(2 * 8)
    assert math.isclose(std(m.stack.layers[3].attn.out_proj.weight), resid, rel_tol=0.05)
    assert math.isclose(std(m.stack.layers[3].ffn.w2.weight), resid, rel_tol=0.05)
    assert (m.stack.layers[0].attn.qkv.bias == 0).all()
    assert (m.stack.layers[0].norm1.weight == 1).all()


# ---- KV-cache decoding ----------------------------------------------------------------------


def _greedy_full(m: CausalLM, ids: torch.Tensor, steps: int) -> tuple[torch.Tensor, list]:
    logits = []
    for _ in range(steps):
        last = m(ids).logits[:, -1]
        logits.append(last)
        ids = torch.cat([ids, last.argmax(-1, keepdim=True)], dim=1)
    return ids, logits


def _greedy_cached(m: CausalLM, ids: torch.Tensor, steps: int, mask: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, list]:
    caches = m.new_caches(ids.shape[0], ids.shape[1] + steps)
    logits, step_in = [], ids
    for _ in range(steps):
        last = m(step_in, caches=caches, attention_mask=mask).logits[:, -1]
        logits.append(last)
        step_in = last.argmax(-1, keepdim=True)
        ids = torch.cat([ids, step_in], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(step_in, dtype=mask.dtype)], dim=1)
    return ids, logits


@pytest.mark.parametrize("case", list(DECODE_CASES))
@torch.no_grad()
def test_kv_cache_decoding_equals_full_forward(case):
    m = _model(**DECODE_CASES[case])
    prompt = torch.randint(0, V, (2, 5))
    want_ids, want_logits = _greedy_full(m, prompt, 10)
    got_ids, got_logits = _greedy_cached(m, prompt, 10)
    assert torch.equal(got_ids, want_ids)
    torch.testing.assert_close(torch.stack(got_logits), torch.stack(want_logits),
                               atol=1e-4, rtol=1e-4)
    window = m.config.sliding_window
    caches = m.new_caches(2, 15)
    want_type = SlidingWindowCache if window else KVCache
    assert all(isinstance(c, want_type) for c in caches) and len(caches) == m.config.n_layers


@torch.no_grad()
def test_sliding_window_chunked_prefill():
    m = _model("llama-tiny", sliding_window=4)
    ids = torch.randint(0, V, (2, 13))
    want = m(ids).logits
    caches = m.new_caches(2, 13)
    got = torch.cat([m(ids[:, i:i + 5], caches=caches).logits for i in range(0, 13, 5)], dim=1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# ---- padding --------------------------------------------------------------------------------


def _left_pad(seqs: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id)
    mask = torch.zeros(len(seqs), n, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, n - len(s):], mask[i, n - len(s):] = s, 1
    return ids, mask


@pytest.mark.parametrize("case", ["gpt2-tiny", "llama-tiny-gqa", "llama-tiny-window", "alibi"])
@torch.no_grad()
def test_left_padding_matches_unpadded(case):
    m = _model(**DECODE_CASES[case])
    seqs = [torch.randint(1, V, (7,)), torch.randint(1, V, (4,))]
    ids, mask = _left_pad(seqs)
    out = m(ids, attention_mask=mask).logits
    for i, s in enumerate(seqs):
        alone = m(s[None]).logits[0]
        torch.testing.assert_close(out[i, -len(s):], alone, atol=1e-5, rtol=1e-5)
    # generation from the padded batch gives each sequence's own continuation
    got_ids, _ = _greedy_cached(m, ids, 6, mask=mask.bool())
    for i, s in enumerate(seqs):
        want_ids, _ = _greedy_full(m, s[None], 6)
        assert torch.equal(got_ids[i, -6:], want_ids[0, -6:])


def test_right_padding_and_mask_shape_error():
    m = _model()
    ids = torch.randint(1, V, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    out = m(ids, attention_mask=mask).logits
    torch.testing.assert_close(out[1, :4], m(ids[1:, :4]).logits[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="attention_mask"):
        m(ids, attention_mask=mask[:, :5])


def test_alibi_bias_is_built_once_per_forward_and_matches_math(monkeypatch):
    """ALiBi on the SDPA path: one materialised bias per forward pass, shared by the layers
    (with the padding mask folded in once); the same numbers as the math backend."""
    from attnkit.attention.multihead import MultiHeadAttention
    from attnkit.attention.score_mods import ScoreMod

    m = _model("gpt2-tiny", position="alibi")
    calls = []
    apply = ScoreMod.apply
    monkeypatch.setattr(ScoreMod, "apply", lambda self, *a, **k: calls.append(1)
                        or apply(self, *a, **k))
    ids = torch.randint(0, m.config.vocab_size, (2, 12))
    am = torch.ones(2, 12, dtype=torch.long)
    am[0, :3] = 0
    with torch.no_grad():
        out = m(ids, attention_mask=am).logits
        assert len(calls) == 1 and m.config.n_layers > 1
        for mha in m.modules():
            if isinstance(mha, MultiHeadAttention):
                mha.backend = "math"
        ref = m(ids, attention_mask=am).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
