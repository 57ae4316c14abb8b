"""BERT family: shapes, config round trip, heads and losses, span extraction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnkit.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    best_span,
    mean_pool,
)

V = 64


def tiny(**kw) -> BertConfig:
    return BertConfig.preset("bert-tiny", vocab_size=V, max_position=32, d_model=32,
                             d_ff=64, n_heads=4, num_labels=3, **kw)


def batch(B: int = 3, L: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, V, (B, L))
    am = torch.ones(B, L, dtype=torch.long)
    am[1, 6:] = 0
    am[2, 3:] = 0
    ids[am == 0] = 0
    tt = torch.zeros(B, L, dtype=torch.long)
    tt[:, 4:] = 1
    return ids, am, tt


def test_presets_and_round_trip(tmp_path):
    base = BertConfig.preset("bert-base")
    assert (base.d_model, base.n_layers, base.n_heads, base.d_ff) == (768, 12, 12, 3072)
    mini = BertConfig.preset("minilm-l6")
    assert (mini.d_model, mini.n_layers, mini.n_heads, mini.d_ff, mini.vocab_size) == (
        384, 6, 12, 1536, 30522)
    assert BertConfig.preset("bert-tiny").n_layers == 2
    c = tiny(backend="math")
    assert BertConfig.from_json(c.to_json()) == c
    c.to_json(tmp_path / "c.json")
    assert BertConfig.from_json(tmp_path / "c.json") == c
    assert c.to_dict()["family"] == "bert"
    with pytest.raises(ValueError, match="unknown BertConfig keys"):
        BertConfig.from_dict({"hidden_size": 3})
    with pytest.raises(ValueError, match="divisible"):
        BertConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="activation"):
        BertConfig(activation="swiglu")


def test_minilm_parameter_count():
    m = BertModel(BertConfig.preset("minilm-l6"))
    assert m.num_parameters() == 22_713_216  # all-MiniLM-L6-v2 incl. pooler
    assert m.num_parameters(exclude_embeddings=True) < m.num_parameters()


def test_model_shapes_weights_and_hidden_states():
    m = BertModel(tiny()).eval()
    ids, am, tt = batch()
    o = m(ids, am, tt, return_weights=True, output_hidden_states=True)
    assert o.last_hidden_state.shape == (3, 9, 32)
    assert o.pooler_output.shape == (3, 32)
    assert len(o.hidden_states) == 3 and len(o.attentions) == 2
    w = o.attentions[0]
    assert w.shape == (3, 4, 9, 9)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 9))
    assert (w[2, :, :, 3:] == 0).all()  # padded keys get no weight
    torch.testing.assert_close(o.hidden_states[-1], o.last_hidden_state)
    # padding does not change the real tokens' outputs
    o2 = m(ids[2:, :3], am[2:, :3], tt[2:, :3])
    torch.testing.assert_close(o2.last_hidden_state[0], o.last_hidden_state[2, :3],
                               atol=1e-5, rtol=1e-5)
    # token types matter
    assert not torch.allclose(m(ids).last_hidden_state, m(ids, token_type_ids=tt).last_hidden_state)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_backend_config_is_used(backend):
    m = BertModel(tiny()).eval()
    ids, am, tt = batch()
    ref = m(ids, am, tt).last_hidden_state
    m.config.backend = backend
    torch.testing.assert_close(m(ids, am, tt).last_hidden_state, ref, atol=1e-5, rtol=1e-5)
    # weights are still available (served by the math backend)
    assert len(m(ids, am, return_weights=True).attentions) == 2


def test_bad_inputs():
    m = BertModel(tiny())
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        m(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        m(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(ValueError, match="max_len"):
        m(torch.zeros(1, 40, dtype=torch.long))


def test_mlm_tied_and_loss():
    m = BertForMaskedLM(tiny()).eval()
    ids, am, tt = batch()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 1] = 5, 7
    o = m(ids, am, tt, labels=labels, output_hidden_states=True)
    assert o.logits.shape == (3, 9, V)
    ref = F.cross_entropy(o.logits[[0, 1], [2, 1]], torch.tensor([5, 7]))
    torch.testing.assert_close(o.loss, ref)
    assert len(o.hidden_states) == 3
    # decoder weight is the word embedding table: counted once
    emb = m.bert.embeddings.word.weight
    assert m.num_parameters() == sum(p.numel() for p in m.parameters())
    o.loss.backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_sequence_classification_and_regression():
    m = BertForSequenceClassification(tiny()).eval()
    ids, am, tt = batch()
    y = torch.tensor([0, 2, 1])
    o = m(ids, am, tt, labels=y, return_weights=True)
    assert o.logits.shape == (3, 3) and len(o.attentions) == 2
    torch.testing.assert_close(o.loss, F.cross_entropy(o.logits, y))
    r = BertForSequenceClassification(tiny().replace(num_labels=1)).eval()
    t = torch.tensor([0.5, -1.0, 2.0])
    o = r(ids, am, labels=t)
    torch.testing.assert_close(o.loss, F.mse_loss(o.logits.squeeze(-1), t))


def test_token_classification_ignores_minus_100():
    m = BertForTokenClassification(tiny()).eval()
    ids, am, tt = batch()
    y = torch.randint(0, 3, ids.shape)
    y[am == 0] = -100
    o = m(ids, am, labels=y)
    assert o.logits.shape == (3, 9, 3)
    keep = am.bool()
    torch.testing.assert_close(o.loss, F.cross_entropy(o.logits[keep], y[keep]))


def test_question_answering_loss_and_span():
    m = BertForQuestionAnswering(tiny()).eval()
    ids, am, tt = batch()
    sp, ep = torch.tensor([1, 2, 0]), torch.tensor([3, 4, 1])
    o = m(ids, am, tt, labels=(sp, ep))
    assert o.start_logits.shape == o.end_logits.shape == (3, 9)
    ref = (F.cross_entropy(o.start_logits, sp) + F.cross_entropy(o.end_logits, ep)) / 2
    torch.testing.assert_close(o.loss, ref)
    torch.testing.assert_close(m(ids, am, tt, labels=torch.stack([sp, ep], -1)).loss, ref)
    # out-of-range positions are ignored
    o2 = m(ids, am, tt, labels=(torch.tensor([1, 2, 99]), torch.tensor([3, 4, 99])))
    ref2 = (F.cross_entropy(o.start_logits[:2], sp[:2])
            + F.cross_entropy(o.end_logits[:2], ep[:2])) / 2
    torch.testing.assert_close(o2.loss, ref2)
    s, e, score = m.best_span(o, max_answer_len=4, mask=am.bool())
    assert s.shape == e.shape == score.shape == (3,)
    assert ((e >= s) & (e - s < 4) & (e < am.sum(1))).all()


def test_best_span_brute_force():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        s, e = torch.randn(2, 11, generator=g), torch.randn(2, 11, generator=g)
        bs, be, bscore = best_span(s, e, max_answer_len=3)
        for b in range(2):
            cands = [(s[b, i] + e[b, j], i, j) for i in range(11) for j in range(i, min(11, i + 3))]
            best = max(cands, key=lambda t: float(t[0]))
            assert (int(bs[b]), int(be[b])) == (best[1], best[2])
            torch.testing.assert_close(bscore[b], best[0])
    s = torch.tensor([0.0, 5.0, 0.0, 0.0])
    e = torch.tensor([9.0, 0.0, 0.0, 4.0])
    st, en, _ = best_span(s, e, max_answer_len=2)  # end before start is never allowed
    assert (int(st), int(en)) == (0, 0)
    st, en, _ = best_span(s, e, max_answer_len=3, mask=torch.tensor([False, True, True, True]))
    assert (int(st), int(en)) == (1, 3)
    with pytest.raises(ValueError, match="max_answer_len"):
        best_span(s, e, 0)


def test_mean_pool():
    h = torch.arange(12.0).view(1, 4, 3).repeat(2, 1, 1)
    am = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    p = mean_pool(h, am)
    torch.testing.assert_close(p[0], h[0, :2].mean(0))
    torch.testing.assert_close(p[1], h[1].mean(0))
    torch.testing.assert_close(mean_pool(h), h.mean(1))


def test_training_step_reduces_loss():
    m = BertForSequenceClassification(tiny(dropout=0.0, attn_dropout=0.0))
    ids, am, _ = batch()
    y = torch.tensor([0, 1, 2])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        loss = m(ids, am, labels=y).loss
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first
