"""Data: corpora, tokenizers, token files and resumable, shardable batch sources.

Typical language-model pipeline::

    from attnkit.data import (builtin_documents, split_documents, train_bpe, TokenFile,
                              CausalLMBatches)

    train_docs, val_docs = split_documents(builtin_documents(), val_fraction=0.1)
    tok = train_bpe((d.text for d in train_docs), vocab_size=4096)
    tok.save(checkpoint_dir)                                   # tokenizer.json (+ config)
    train = TokenFile.build((d.text for d in train_docs), tok, cache / "train.bin",
                            source_key="builtin-v1")
    batches = CausalLMBatches(train, batch_size=8, seq_len=256, seed=0)
    batch = batches.next_batch()          # {"input_ids": (8, 256), "labels": (8, 256)}
    state = batches.state_dict()          # JSON; load_state_dict(state) resumes exactly

Every batch source implements :class:`BatchSource` (``next_batch``/``state_dict``/
``load_state_dict``) plus ``shard(rank, world)`` and ``eval_batches(max_batches)``; see
:mod:`attnkit.data.batches` for the ordering, resume and sharding contract.
"""

from attnkit.data.batches import (
    IGNORE_INDEX,
    BatchSource,
    CausalLMBatches,
    EpochOrder,
    MaskedLMBatches,
    ShardedBatches,
    mix_seed,
    pad_sequences,
)
from attnkit.data.corpus import (
    STDLIB_MODULES,
    CorpusError,
    Document,
    builtin_corpus,
    builtin_documents,
    cache_dir,
    load_documents,
    load_jsonl,
    load_text,
    split_documents,
)
from attnkit.data.qa import QAExample, QAFeature, SpanQABatches, load_squad
from attnkit.data.tasks import (
    ClassificationBatches,
    Seq2SeqBatches,
    build_label_map,
    read_records,
)
from attnkit.data.tokenizers import (
    CharTokenizer,
    HFTokenizer,
    Tokenizer,
    load_tokenizer,
    train_bpe,
    train_tokenizer,
    train_wordpiece,
)
from attnkit.data.tokens import TokenFile, TokenFileError, token_dtype

__all__ = [
    # corpora
    "Document", "CorpusError", "STDLIB_MODULES", "cache_dir", "builtin_documents",
    "builtin_corpus", "split_documents", "load_documents", "load_text", "load_jsonl",
    # tokenizers
    "Tokenizer", "CharTokenizer", "HFTokenizer", "train_bpe", "train_wordpiece",
    "train_tokenizer", "load_tokenizer",
    # token files
    "TokenFile", "TokenFileError", "token_dtype",
    # batch sources
    "BatchSource", "ShardedBatches", "EpochOrder", "mix_seed", "pad_sequences", "IGNORE_INDEX",
    "CausalLMBatches", "MaskedLMBatches", "Seq2SeqBatches", "ClassificationBatches",
    "build_label_map", "read_records", "SpanQABatches", "QAExample", "QAFeature",
    "load_squad",
]
