"""T5: attnkit Seq2SeqLM vs transformers T5ForConditionalGeneration (random tiny configs)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

transformers = pytest.importorskip("transformers")
from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402

from attnkit.interop.hf import load_hf, save_hf  # noqa: E402
from attnkit.interop.t5 import load_t5, save_t5  # noqa: E402
from attnkit.models.seq2seq import Seq2SeqConfig, Seq2SeqLM  # noqa: E402

ATOL = 1e-4
BASE = dict(vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
            relative_attention_num_buckets=8, relative_attention_max_distance=20,
            dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
CASES = {
    # T5 v1.0: ReLU, head tied to `shared`, decoder output rescaled by d_model^-0.5.
    "v1.0-relu-tied": dict(feed_forward_proj="relu"),
    # T5 v1.1: gated tanh-GELU, separate lm_head, no rescaling; deeper decoder.
    "v1.1-gated-gelu-untied": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                   num_decoder_layers=3),
    # Tied head without rescaling (what transformers 5 saves for v1.1-style configs).
    "gated-silu-tied-unscaled": dict(feed_forward_proj="gated-silu", tie_word_embeddings=False),
    "gelu-one-decoder-layer": dict(feed_forward_proj="gelu", num_decoder_layers=1, num_heads=4,
                                   d_kv=16),
}


def _hf_model(case: str, **overrides) -> T5ForConditionalGeneration:
    cfg = T5Config(**{**BASE, **CASES[case], **overrides})
    cfg._attn_implementation = "eager"
    model = T5ForConditionalGeneration(cfg).eval()
    if case == "v1.1-gated-gelu-untied":  # transformers 5 ties at init; untie by hand
        model.lm_head.weight = nn.Parameter(torch.randn(97, 32) * 0.05)
    return model


def _inputs():
    ids = torch.randint(2, 97, (3, 13))
    am = torch.ones(3, 13, dtype=torch.long)
    am[1, 8:] = 0  # right padding
    am[2, :3] = 0  # left padding (T5's relative positions allow both)
    dec = torch.randint(2, 97, (3, 9))
    dmask = torch.ones(3, 9, dtype=torch.long)
    dmask[0, 6:] = 0
    return ids, am, dec, dmask


def _compare(ref, ours, *, with_extras: bool = True) -> None:
    torch.testing.assert_close(ours.logits, ref.logits, atol=ATOL, rtol=0)
    if not with_extras:
        return
    pairs = [("encoder_hidden_states", "encoder_hidden_states"),
             ("decoder_hidden_states", "decoder_hidden_states"),
             ("encoder_attentions", "encoder_attentions"),
             ("decoder_attentions", "decoder_attentions"),
             ("cross_attentions", "cross_attentions")]
    for theirs, mine in pairs:
        a, b = getattr(ref, theirs), getattr(ours, mine)
        assert len(a) == len(b), theirs
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            torch.testing.assert_close(y, x, atol=ATOL, rtol=0, msg=f"{theirs}[{i}]")


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_parity_and_round_trip(case, tmp_path):
    hf = _hf_model(case)
    hf.save_pretrained(tmp_path / "hf")
    model = load_t5(tmp_path / "hf")
    cfg = model.config
    assert cfg.tie_embeddings == (case != "v1.1-gated-gelu-untied")
    assert cfg.scale_embeddings == ("output" if case in ("v1.0-relu-tied",
                                                         "gelu-one-decoder-layer") else "none")
    ids, am, dec, dmask = _inputs()
    use_dmask = case != "gelu-one-decoder-layer"
    kw = dict(decoder_attention_mask=dmask) if use_dmask else {}
    ref = hf(input_ids=ids, attention_mask=am, decoder_input_ids=dec, output_attentions=True,
             output_hidden_states=True, **kw)
    ours = model(ids, am, dec, kw.get("decoder_attention_mask"), return_weights=True,
                 output_hidden_states=True)
    _compare(ref, ours)
    torch.testing.assert_close(ours.encoder_hidden, ref.encoder_last_hidden_state, atol=ATOL,
                               rtol=0)
    # Loss from labels (shift-right inside both).
    labels = dec.clone()
    labels[0, -2:] = -100
    torch.testing.assert_close(model(ids, am, labels=labels).loss,
                               hf(input_ids=ids, attention_mask=am, labels=labels).loss,
                               atol=ATOL, rtol=0)

    # Round trip: attnkit -> HF dir -> attnkit is exact; tensors match what HF wrote.
    save_t5(model, tmp_path / "ours")
    again = load_t5(tmp_path / "ours")
    assert again.config == cfg
    sd0, sd1 = model.state_dict(), again.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    theirs, mine = load_file(tmp_path / "hf/model.safetensors"), load_file(
        tmp_path / "ours/model.safetensors")
    assert set(theirs) <= set(mine)
    assert all(torch.equal(theirs[k], mine[k]) for k in theirs)

    # transformers loads the attnkit-written directory and computes the same thing.
    back = T5ForConditionalGeneration.from_pretrained(tmp_path / "ours",
                                                      attn_implementation="eager").eval()
    assert back.config.scale_decoder_outputs == hf.config.scale_decoder_outputs
    _compare(back(input_ids=ids, attention_mask=am, decoder_input_ids=dec, **kw), ours,
             with_extras=False)


@torch.no_grad()
def test_cached_greedy_matches_hf_generate(tmp_path):
    # (transformers' generate cache assumes as many decoder as encoder layers.)
    hf = _hf_model("v1.1-gated-gelu-untied", num_decoder_layers=2)
    hf.save_pretrained(tmp_path)
    model = load_t5(tmp_path)
    ids, am, _, _ = _inputs()
    steps = 6
    ref = hf.generate(input_ids=ids, attention_mask=am, max_new_tokens=steps,
                      min_new_tokens=steps, do_sample=False, num_beams=1)
    state = model.init_state(model.encode(ids, am).hidden, am, max_len=steps)
    tok = torch.zeros(3, 1, dtype=torch.long)
    out = [tok]
    for _ in range(steps):
        logits = model.decode_step(tok, state).logits[:, -1]
        logits[:, model.config.eos_token_id] = -float("inf")  # as min_new_tokens does
        tok = logits.argmax(-1, keepdim=True)
        out.append(tok)
    assert torch.equal(torch.cat(out, 1), ref)


@torch.no_grad()
def test_hf_dispatch(tmp_path):
    hf = _hf_model("v1.0-relu-tied")
    hf.save_pretrained(tmp_path / "a")
    model = load_hf(tmp_path / "a")
    assert type(model).__name__ == "Seq2SeqLM"
    save_hf(model, tmp_path / "b")
    assert json.loads((tmp_path / "b/config.json").read_text())["model_type"] == "t5"


def test_optional_and_ignored_keys(tmp_path):
    hf = _hf_model("v1.0-relu-tied")
    hf.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    sd = load_file(path)
    ref = load_t5(tmp_path).state_dict()
    # Older exports carry embedding copies, an unused cross-attention bias and the tied head.
    for k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        sd[k] = sd["shared.weight"].clone()
    sd["lm_head.weight"] = sd["shared.weight"].clone()
    sd["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(8, 3)
    save_file(sd, path)
    got = load_t5(tmp_path)
    assert got.config.tie_embeddings
    assert all(torch.equal(ref[k], v) for k, v in got.state_dict().items())
    sd["decoder.embed_tokens.weight"] = torch.randn_like(sd["shared.weight"])
    save_file(sd, path)
    with pytest.raises(ValueError, match="differs from shared.weight"):
        load_t5(tmp_path)


def test_key_errors(tmp_path):
    hf = _hf_model("v1.0-relu-tied")
    hf.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    sd = load_file(path)
    del sd["encoder.block.1.layer.0.SelfAttention.k.weight"]
    sd["encoder.block.1.layer.0.SelfAttention.q.weight"] = torch.zeros(5, 32)
    sd["encoder.block.9.layer.0.layer_norm.weight"] = torch.zeros(32)
    save_file(sd, path)
    with pytest.raises(ValueError) as e:
        load_t5(tmp_path)
    msg = str(e.value)
    assert "missing keys (1): encoder.block.1.layer.0.SelfAttention.k.weight" in msg
    assert "unexpected keys (1): encoder.block.9.layer.0.layer_norm.weight" in msg
    assert "encoder.block.1.layer.0.SelfAttention.q.weight: expected (24, 32), got (5, 32)" in msg


def test_config_errors(tmp_path):
    hf = _hf_model("v1.0-relu-tied")
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "feed_forward_proj": "gated-tanh"}))
    with pytest.raises(ValueError, match="feed_forward_proj='gated-tanh'"):
        load_t5(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "bart"}))
    with pytest.raises(ValueError, match="not a T5 config"):
        load_t5(tmp_path)
    original = Seq2SeqLM(Seq2SeqConfig.preset("transformer-base", vocab_size=50, d_model=16,
                                              n_layers=1, n_heads=2, d_ff=32))
    with pytest.raises(ValueError, match="cannot be saved as T5") as e:
        save_t5(original, tmp_path / "x")
    for what in ("position='sinusoidal'", "norm='layernorm'", "bias=True", "attn_scale=None",
                 "scale_embeddings='input'"):
        assert what in str(e.value)
