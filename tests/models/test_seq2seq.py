"""Seq2SeqLM: shapes, config round trip, incremental == full decoding, training step, errors."""

import pytest
import torch

from attnkit.models.seq2seq import GatedGeluFeedForward, Seq2SeqConfig, Seq2SeqLM, shift_right

SMALL = dict(vocab_size=61, d_model=32, n_layers=2, n_decoder_layers=3, n_heads=4, d_ff=48,
             head_dim=8, relative_num_buckets=8, relative_max_distance=16, dropout=0.0)


def _cfg(preset: str = "t5-tiny", **kw) -> Seq2SeqConfig:
    return Seq2SeqConfig.preset(preset, **{**SMALL, **kw})


def _inputs(B: int = 2, Ls: int = 9, Lt: int = 6, V: int = 61):
    ids = torch.randint(2, V, (B, Ls))
    am = torch.ones(B, Ls, dtype=torch.long)
    am[1, 6:] = 0
    return ids, am, torch.randint(2, V, (B, Lt))


@pytest.mark.parametrize("preset", ["t5-tiny", "transformer-base"])
def test_shapes_and_outputs(preset):
    cfg = _cfg(preset)
    m = Seq2SeqLM(cfg).eval()
    ids, am, dec = _inputs()
    out = m(ids, am, dec, return_weights=True, output_hidden_states=True)
    assert out.logits.shape == (2, 6, 61)
    assert out.encoder_hidden.shape == (2, 9, 32)
    assert len(out.encoder_hidden_states) == 3 and len(out.decoder_hidden_states) == 4
    assert [a.shape for a in out.encoder_attentions] == [(2, 4, 9, 9)] * 2
    assert [a.shape for a in out.decoder_attentions] == [(2, 4, 6, 6)] * 3
    assert [a.shape for a in out.cross_attentions] == [(2, 4, 6, 9)] * 3
    # Padded encoder keys get no weight; decoder self-attention is causal.
    assert out.encoder_attentions[0][1, :, :, 6:].abs().max() == 0
    assert out.cross_attentions[0][1, :, :, 6:].abs().max() == 0
    assert torch.triu(out.decoder_attentions[0], 1).abs().max() == 0
    # Weights requested or not (math vs fused backends) give the same logits.
    plain = m(ids, am, dec)
    torch.testing.assert_close(plain.logits, out.logits, atol=1e-5, rtol=1e-5)


def test_config_round_trip_and_presets(tmp_path):
    cfg = _cfg(activation="geglu", tie_embeddings=False, scale_embeddings="none")
    assert Seq2SeqConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert Seq2SeqConfig.from_json(tmp_path / "c.json") == cfg
    base = Seq2SeqConfig.preset("transformer-base")
    assert (base.d_model, base.n_layers, base.n_decoder_layers, base.n_heads, base.d_ff) == (
        512, 6, 6, 8, 2048)
    assert (base.position, base.norm_position, base.norm) == ("sinusoidal", "post", "layernorm")
    small = Seq2SeqConfig.preset("t5-small")
    assert (small.head_dim, small.attn_scale, small.norm, small.position) == (
        64, 1.0, "rmsnorm", "relative")
    m = Seq2SeqLM(Seq2SeqConfig.preset("t5-small"))
    assert m.num_parameters() == 60_506_624  # google-t5/t5-small, tied head


def test_geglu_ffn_and_untied_head():
    m = Seq2SeqLM(_cfg(activation="geglu", tie_embeddings=False))
    assert all(isinstance(blk.ffn, GatedGeluFeedForward)
               for blk in [*m.encoder.layers, *m.decoder.layers])
    assert m.lm_head is not None and m.lm_head.weight is not m.embed.weight
    ids, am, dec = _inputs()
    assert m(ids, am, dec).logits.shape == (2, 6, 61)


def _greedy_full(m, ids, am, steps):
    out = torch.full((ids.shape[0], 1), m.config.decoder_start_token_id)
    for _ in range(steps):
        logits = m(ids, am, out).logits[:, -1]
        out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)
    return out


def _greedy_cached(m, ids, am, steps):
    enc = m.encode(ids, am).hidden
    state = m.init_state(enc, am, max_len=steps)
    tok = torch.full((ids.shape[0], 1), m.config.decoder_start_token_id)
    out, all_logits = tok, []
    for _ in range(steps):
        logits = m.decode_step(tok, state).logits[:, -1]
        all_logits.append(logits)
        tok = logits.argmax(-1, keepdim=True)
        out = torch.cat([out, tok], dim=1)
    return out, torch.stack(all_logits, 1)


@pytest.mark.parametrize("preset,kw", [("t5-tiny", {}), ("t5-tiny", {"activation": "geglu"}),
                                       ("transformer-base", {})])
@torch.no_grad()
def test_incremental_equals_full_decoding(preset, kw):
    m = Seq2SeqLM(_cfg(preset, **kw)).eval()
    ids, am, _ = _inputs()
    steps = 7
    full = _greedy_full(m, ids, am, steps)
    cached, step_logits = _greedy_cached(m, ids, am, steps)
    assert torch.equal(full, cached)
    ref = m(ids, am, full[:, :-1]).logits
    torch.testing.assert_close(step_logits, ref, atol=1e-5, rtol=1e-5)
    # Cross-attention projections were computed once and reused.
    state = m.init_state(m.encode(ids, am).hidden, am, max_len=3)
    m.decode_step(full[:, :1], state)
    k0 = state.cross_caches[0].k.clone()
    m.decode_step(full[:, 1:3], state)  # a chunk of two tokens works too
    assert state.pos == 3 and state.cross_caches[0].pos == 9
    assert torch.equal(state.cross_caches[0].k, k0)


@torch.no_grad()
def test_decoder_padding_mask_matches_unpadded():
    m = Seq2SeqLM(_cfg()).eval()
    ids, am, dec = _inputs()
    dmask = torch.ones_like(dec)
    dmask[0, 4:] = 0
    padded = m(ids, am, dec, dmask).logits
    short = m(ids[:1], am[:1], dec[:1, :4]).logits
    torch.testing.assert_close(padded[0, :4], short[0], atol=1e-5, rtol=1e-5)


def test_original_transformer_forward_backward():
    cfg = _cfg("transformer-base", dropout=0.1)
    m = Seq2SeqLM(cfg).train()
    assert m.lm_head is None and m.positions is not None and m.encoder_bias is None
    assert m.encoder.final_norm is None and m.encoder.layers[0].cfg.norm_position == "post"
    ids, am, labels = _inputs()
    labels[0, -2:] = -100
    out = m(ids, am, labels=labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [
        n for n, g in grads.items() if g is None]
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    opt.step()


def test_t5_relative_bias_gets_gradients():
    m = Seq2SeqLM(_cfg())
    ids, am, labels = _inputs()
    m(ids, am, labels=labels).loss.backward()
    assert m.encoder_bias.embedding.weight.grad.abs().sum() > 0
    assert m.decoder_bias.embedding.weight.grad.abs().sum() > 0


def test_t5_bias_is_computed_once_per_stack_and_matches_per_layer_math(monkeypatch):
    """On the SDPA path every layer of a stack shares one materialised relative bias (as T5
    passes position_bias on); outputs and gradients equal the math backend, which applies the
    bias inside each layer."""
    import attnkit.attention.relative_bias as rb
    from attnkit.attention.multihead import MultiHeadAttention

    calls = []
    bucket = rb.relative_position_bucket
    monkeypatch.setattr(rb, "relative_position_bucket",
                        lambda *a, **k: calls.append(1) or bucket(*a, **k))
    m = Seq2SeqLM(_cfg())
    ids, am, labels = _inputs()
    out = m(ids, am, labels=labels)
    assert len(calls) == 2  # encoder (2 layers) once, decoder self-attention (3 layers) once
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()
             if "bias" in n and p.grad is not None}
    for mha in m.modules():
        if isinstance(mha, MultiHeadAttention):
            mha.backend = "math"
    m.zero_grad()
    ref = m(ids, am, labels=labels)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    ref.loss.backward()
    assert {"encoder_bias.embedding.weight", "decoder_bias.embedding.weight"} <= set(grads)
    for n, g in grads.items():
        torch.testing.assert_close(g, dict(m.named_parameters())[n].grad, atol=1e-5, rtol=1e-4)


def test_shift_right():
    labels = torch.tensor([[5, 6, -100, -100], [7, 8, 9, 10]])
    assert shift_right(labels, 0, 0).tolist() == [[0, 5, 6, 0], [0, 7, 8, 9]]


def test_errors():
    with pytest.raises(ValueError, match="unknown activation"):
        _cfg(activation="tanh")
    with pytest.raises(ValueError, match="unknown position"):
        _cfg(position="rope")
    with pytest.raises(ValueError, match="scale_embeddings"):
        _cfg(scale_embeddings="yes")
    with pytest.raises(ValueError, match="divisible"):
        _cfg(head_dim=None, n_heads=5)
    with pytest.raises(ValueError, match="unknown Seq2SeqConfig keys"):
        Seq2SeqConfig.from_dict({"d_modle": 3})
    with pytest.raises(ValueError, match="outside the vocabulary"):
        _cfg(pad_token_id=1000)
    m = Seq2SeqLM(_cfg()).eval()
    ids, am, dec = _inputs()
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        m(ids, am[:, :3], dec)
    with pytest.raises(ValueError, match="decoder_input_ids or labels"):
        m(ids, am)
    with pytest.raises(ValueError, match="must share B"):
        m(ids, am, dec[:1])
    with pytest.raises(ValueError, match="integer"):
        m(ids.float(), am, dec)
    state = m.init_state(m.encode(ids, am).hidden, am, max_len=2)
    with torch.no_grad(), pytest.raises(ValueError, match="overflow"):
        m.decode_step(dec[:, :3], state)
