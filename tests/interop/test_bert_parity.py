"""attnkit BERT vs Hugging Face ``transformers`` BERT: same weights, same numbers.

Models are built from small configs with random weights (nothing is downloaded), perturbed so
LayerNorm gains and biases are not trivially 1 / 0, saved with ``save_pretrained`` and loaded
with :func:`load_bert`; then the reverse direction with :func:`save_bert`.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from attnkit.interop.bert import load_bert, save_bert
from attnkit.models.bert import BertForMaskedLM, BertModel

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
CONFIGS = {
    "gelu": dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=48, max_position_embeddings=40, type_vocab_size=2),
    "gelu_new-3heads": dict(vocab_size=61, hidden_size=24, num_hidden_layers=3,
                            num_attention_heads=3, intermediate_size=40,
                            max_position_embeddings=24, type_vocab_size=3,
                            hidden_act="gelu_new", layer_norm_eps=1e-7, pad_token_id=1),
    "relu-1layer": dict(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=16, hidden_act="relu", num_labels=4),
}
HEADS = {
    None: "BertModel", "mlm": "BertForMaskedLM",
    "classification": "BertForSequenceClassification",
    "token": "BertForTokenClassification", "qa": "BertForQuestionAnswering",
}


def hf_model(name: str, cls_name: str):
    kw = dict(CONFIGS[name])
    if cls_name == "BertForQuestionAnswering":
        kw["num_labels"] = 2  # HF's QA head is Linear(d, num_labels) split into start/end
    cfg = transformers.BertConfig(**kw, attn_implementation="eager")
    torch.manual_seed(hash((name, cls_name)) % 1000)
    m = getattr(transformers, cls_name)(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def inputs(name: str, B: int = 3, L: int = 11) -> dict[str, torch.Tensor]:
    c = CONFIGS[name]
    L = min(L, c["max_position_embeddings"])
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(2, c["vocab_size"], (B, L), generator=g)
    am = torch.ones(B, L, dtype=torch.long)
    am[1, L - 4:] = 0
    am[2, 3:] = 0
    ids[am == 0] = c.get("pad_token_id", 0)
    tt = torch.randint(0, c.get("type_vocab_size", 2), (B, L), generator=g)
    return dict(input_ids=ids, attention_mask=am, token_type_ids=tt)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a.float() - b.float()).abs().max().item()
    assert err <= ATOL, f"max abs err {err:.2e}"


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("head", list(HEADS))
def test_hf_to_attnkit_parity(tmp_path, name, head):
    ref = hf_model(name, HEADS[head])
    ref.save_pretrained(tmp_path)
    ours = load_bert(tmp_path, head)
    x = inputs(name)
    with torch.no_grad():
        r = ref(**x, output_attentions=True, output_hidden_states=True)
        o = ours(**x, return_weights=True, output_hidden_states=True)
    if head is None:
        close(o.last_hidden_state, r.last_hidden_state)
        close(o.pooler_output, r.pooler_output)
    elif head == "qa":
        close(o.start_logits, r.start_logits)
        close(o.end_logits, r.end_logits)
    else:
        close(o.logits, r.logits)
    assert len(o.hidden_states) == len(r.hidden_states)
    for a, b in zip(o.hidden_states, r.hidden_states, strict=True):
        close(a, b)
    assert len(o.attentions) == len(r.attentions)
    for a, b in zip(o.attentions, r.attentions, strict=True):
        close(a, b)


@pytest.mark.parametrize("head", [h for h in HEADS if h is not None])
def test_losses_match_hf(tmp_path, head):
    name = "gelu"
    ref = hf_model(name, HEADS[head])
    ref.save_pretrained(tmp_path)
    ours = load_bert(tmp_path, head)
    x = inputs(name)
    B, L = x["input_ids"].shape
    if head == "qa":
        sp, ep = torch.tensor([1, 2, 30]), torch.tensor([3, 5, 30])
        r = ref(**x, start_positions=sp, end_positions=ep)
        o = ours(**x, labels=(sp, ep))
    else:
        if head == "classification":
            y = torch.tensor([0, 1, 1])
        else:
            y = torch.randint(0, 2, (B, L))
            y[x["attention_mask"] == 0] = -100
        r, o = ref(**x, labels=y), ours(**x, labels=y)
    close(o.loss, r.loss)


@pytest.mark.parametrize("head", list(HEADS))
def test_attnkit_to_hf_round_trip(tmp_path, head):
    name = "gelu_new-3heads"
    ref = hf_model(name, HEADS[head])
    ref.save_pretrained(tmp_path / "a")
    ours = load_bert(tmp_path / "a", head)
    save_bert(ours, tmp_path / "b")
    # exact round trip of every tensor (HF -> attnkit -> HF)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(
        tmp_path / "b" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # attnkit -> attnkit is exact too
    again = load_bert(tmp_path / "b", head)
    for (k, p), (k2, q) in zip(ours.state_dict().items(), again.state_dict().items(),
                               strict=True):
        assert k == k2 and torch.equal(p, q), k
    # and transformers reads what we wrote, with the same numbers
    back = getattr(transformers, HEADS[head]).from_pretrained(
        tmp_path / "b", attn_implementation="eager").eval()
    assert json.loads((tmp_path / "b" / "config.json").read_text())["architectures"] == [
        HEADS[head]]
    x = inputs(name)
    with torch.no_grad():
        r1, r2 = ref(**x), back(**x)
    for field in ("last_hidden_state", "logits", "start_logits"):
        if hasattr(r1, field) and getattr(r1, field) is not None:
            assert torch.equal(getattr(r1, field), getattr(r2, field))


def test_fresh_attnkit_model_saves_for_hf(tmp_path):
    from attnkit.models.bert import BertConfig

    cfg = BertConfig.preset("bert-tiny", vocab_size=40, max_position=20, d_model=16,
                            n_heads=2, d_ff=24, activation="gelu_tanh")
    m = BertForMaskedLM(cfg).eval()
    save_bert(m, tmp_path)
    ref = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        close(m(x).logits, ref(x).logits)


def _bare_encoder_checkpoint(tmp_path):
    ref = hf_model("gelu", "BertModel")
    ref.save_pretrained(tmp_path)
    return ref


def test_key_prefixes_and_ignorable_buffers(tmp_path):
    # sentence-transformers layout: bare keys plus the position_ids buffer
    ref = _bare_encoder_checkpoint(tmp_path)
    st = load_file(tmp_path / "model.safetensors")
    st["embeddings.position_ids"] = torch.arange(40)[None]
    save_file(st, tmp_path / "model.safetensors")
    m = load_bert(tmp_path)
    assert isinstance(m, BertModel) and m.pooler is not None
    x = inputs("gelu")
    with torch.no_grad():
        close(m(**x).last_hidden_state, ref(**x).last_hidden_state)
    # a head checkpoint (``bert.`` prefix + head weights) loads as a bare encoder too
    ref2 = hf_model("gelu", "BertForSequenceClassification")
    ref2.save_pretrained(tmp_path / "cls")
    enc = load_bert(tmp_path / "cls")
    with torch.no_grad():
        close(enc(**x).last_hidden_state, ref2.bert(**x).last_hidden_state)
    # and a bare encoder checkpoint feeds a token-classification head with strict=False
    tok = load_bert(tmp_path, "token", strict=False)
    with torch.no_grad():
        close(tok.bert(**x).last_hidden_state, ref(**x).last_hidden_state)
    with pytest.raises(ValueError, match=r"missing keys \(2\): classifier.bias, classifier.weight"):
        load_bert(tmp_path, "token")


def test_legacy_names_and_stored_decoder(tmp_path):
    ref = hf_model("gelu", "BertForMaskedLM")
    ref.save_pretrained(tmp_path)
    st = load_file(tmp_path / "model.safetensors")
    st = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                   "LayerNorm.beta"): v
          for k, v in st.items()}
    st["cls.predictions.decoder.weight"] = st["bert.embeddings.word_embeddings.weight"].clone()
    st["cls.seq_relationship.weight"] = torch.zeros(2, 32)
    save_file(st, tmp_path / "model.safetensors")
    m = load_bert(tmp_path, "mlm")
    x = inputs("gelu")
    with torch.no_grad():
        close(m(**x).logits, ref(**x).logits)
    st["cls.predictions.decoder.weight"] += 1
    save_file(st, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="untied"):
        load_bert(tmp_path, "mlm")


def test_errors_list_keys(tmp_path):
    _bare_encoder_checkpoint(tmp_path)
    st = load_file(tmp_path / "model.safetensors")
    del st["encoder.layer.1.output.dense.bias"]
    st["encoder.layer.0.extra.weight"] = torch.zeros(3)
    st["embeddings.token_type_embeddings.weight"] = torch.zeros(5, 32)
    save_file(st, tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as e:
        load_bert(tmp_path)
    msg = str(e.value)
    assert "missing keys (1): encoder.layer.1.output.dense.bias" in msg
    assert "unexpected keys (1): encoder.layer.0.extra.weight" in msg
    assert "embeddings.token_type_embeddings.weight: expected (2, 32), got (5, 32)" in msg
    with pytest.raises(ValueError, match="unknown BERT head"):
        load_bert(tmp_path, "nsp")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_act": "swish",
                                                      "position_embedding_type": "relative_key"}))
    with pytest.raises(ValueError, match="hidden_act='swish'.*\n.*relative_key"):
        load_bert(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "roberta"}))
    with pytest.raises(ValueError, match="not a BERT config"):
        load_bert(tmp_path)
    with pytest.raises(TypeError, match="save_bert takes"):
        save_bert(torch.nn.Linear(2, 2), tmp_path / "x")  # type: ignore[arg-type]


def test_hf_registry_dispatch(tmp_path):
    from attnkit.interop.hf import load_hf, save_hf

    ref = hf_model("gelu", "BertForQuestionAnswering")
    ref.save_pretrained(tmp_path / "a")
    m = load_hf(tmp_path / "a", head="qa")
    save_hf(m, tmp_path / "b")
    back = load_hf(tmp_path / "b", head="qa")
    x = inputs("gelu")
    with torch.no_grad():
        assert torch.equal(m(**x).start_logits, back(**x).start_logits)
        close(m(**x).end_logits, ref(**x).end_logits)
    assert type(load_hf(tmp_path / "b")).__name__ == "BertForQuestionAnswering"  # as saved
    assert isinstance(load_hf(tmp_path / "b", head=None), BertModel)


@pytest.mark.parametrize("cls_name,want", [
    ("BertForSequenceClassification", "BertForSequenceClassification"),
    ("BertForPreTraining", "BertForMaskedLM"),  # its MLM half; the NSP weights are dropped
    ("BertModel", "BertModel"),
])
def test_load_hf_takes_the_head_from_architectures(tmp_path, cls_name, want):
    from attnkit.interop.bert import head_for_checkpoint
    from attnkit.interop.hf import load_hf

    ref = hf_model("gelu", cls_name)
    ref.save_pretrained(tmp_path)
    m = load_hf(tmp_path)
    assert type(m).__name__ == want
    assert head_for_checkpoint(tmp_path) == {"BertModel": None, "BertForMaskedLM": "mlm"}.get(
        want, "classification")
    x = inputs("gelu")
    with torch.no_grad():
        r, o = ref(**x), m(**x)
    if cls_name == "BertForPreTraining":
        close(o.logits, r.prediction_logits)
    elif cls_name == "BertModel":
        close(o.last_hidden_state, r.last_hidden_state)
    else:
        close(o.logits, r.logits)
    assert isinstance(load_hf(tmp_path, head=None), BertModel)  # an explicit head wins
