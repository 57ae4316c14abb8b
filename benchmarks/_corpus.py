"""The built-in corpus as character tokens, for the benchmarks that train on real text.

The same data ``attnkit train`` uses by default: Python's documentation
(:func:`attnkit.data.builtin_documents`), split 90/10 by document
(:func:`attnkit.data.split_documents`), a character vocabulary over every document
(:meth:`attnkit.data.CharTokenizer.train`), documents joined by newlines into one train and
one validation token stream, read as packed windows by :class:`attnkit.data.CausalLMBatches`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CharCorpus:
    train: np.ndarray  # token ids
    val: np.ndarray
    vocab_size: int
    documents: int
    characters: int

    def batches(self, split: str, batch: int, seq_len: int, seed: int = 0):
        from attnkit.data import CausalLMBatches

        tokens = self.train if split == "train" else self.val
        return CausalLMBatches(tokens, batch_size=batch, seq_len=seq_len, seed=seed)


def char_corpus() -> CharCorpus:
    from attnkit.data import CharTokenizer, builtin_documents, split_documents

    docs = builtin_documents()
    train_docs, val_docs = split_documents(docs, val_fraction=0.1)
    tok = CharTokenizer.train(d.text for d in docs)

    def ids(ds) -> np.ndarray:
        return np.asarray(tok.encode("\n".join(d.text for d in ds)), dtype=np.int64)

    return CharCorpus(ids(train_docs), ids(val_docs), tok.vocab_size, len(docs),
                      sum(len(d.text) for d in docs))
