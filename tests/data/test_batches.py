"""Batch sources: determinism, exact resume, sharding, masking statistics, task layouts."""

from __future__ import annotations

import json
from pydoc_data.topics import topics

import numpy as np
import pytest
import torch

from attnkit.data.batches import (
    IGNORE_INDEX,
    BatchSource,
    CausalLMBatches,
    MaskedLMBatches,
)
from attnkit.data.qa import QAExample, SpanQABatches, answer_token_span, load_squad
from attnkit.data.tasks import ClassificationBatches, Seq2SeqBatches, build_label_map
from attnkit.data.tokenizers import train_wordpiece
from attnkit.data.tokens import TokenFile


@pytest.fixture(scope="module")
def wp():
    return train_wordpiece([topics[k] for k in sorted(topics)[:20]], vocab_size=400)


def take(src, k):
    return [src.next_batch() for _ in range(k)]


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True))


def check_resume(make, k=5, m=12):
    """k batches, save state (through JSON), m more; a fresh source loaded with the state
    gives the same m."""
    a = make(seed=1)
    take(a, k)
    state = json.loads(json.dumps(a.state_dict()))
    expected = take(a, m)
    b = make(seed=999)  # the seed comes from the state
    b.load_state_dict(state)
    assert same(take(b, m), expected)


def check_sharding(make, world=2, steps=7):
    """Rank shards concatenated in rank order == the single-process batch of the same global
    size, step after step (also across epoch boundaries)."""
    full = make(batch_size=4 * world, rank=0, world=1)
    ranks = [make(batch_size=4, rank=0, world=world)] + [
        make(batch_size=4).shard(r, world) for r in range(1, world)]
    for _ in range(steps):
        g = full.next_batch()
        parts = [r.next_batch() for r in ranks]
        for key in g:
            assert torch.equal(torch.cat([p[key] for p in parts]), g[key]), key


# ---- causal LM ------------------------------------------------------------------------------

STREAM = np.arange(1001)  # value == position: a window shows where it came from


def causal(seed=0, batch_size=8, **kw):
    return CausalLMBatches(STREAM, batch_size, seq_len=11, seed=seed, **kw)


def test_causal_windows_cover_every_token_each_epoch():
    src = causal()
    assert isinstance(src, BatchSource) and src.num_examples == 100 and len(src) == 13
    rows = torch.cat([b["input_ids"] for b in take(src, 25)])  # 200 rows = 2 epochs exactly
    batch = src.next_batch()
    assert torch.equal(batch["labels"], batch["input_ids"])  # CausalLM shifts internally
    assert torch.equal(rows - rows[:, :1], torch.arange(11).expand_as(rows))  # contiguous
    starts = rows[:, 0]
    assert (starts % 10 == 0).all()  # windows overlap by one token: each target once
    e0, e1 = starts[:100].sort().values, starts[100:].sort().values
    assert torch.equal(e0, torch.arange(0, 1000, 10)) and torch.equal(e1, e0)
    assert not torch.equal(starts[:100], starts[100:])  # a new order each epoch
    assert src.state_dict()["epoch"] == 2 and src.state_dict()["cursor"] == 8


def test_causal_determinism_resume_and_sharding():
    assert same(take(causal(seed=3), 4), take(causal(seed=3), 4))
    assert not same(take(causal(seed=3), 4), take(causal(seed=4), 4))
    check_resume(causal, k=5, m=20)
    check_sharding(causal, world=2, steps=30)
    check_sharding(causal, world=3, steps=10)
    # a state saved by a sharded run resumes a single-process run at the same global batch
    r0 = causal(batch_size=4, rank=0, world=2)
    take(r0, 3)
    single = causal(batch_size=8)
    single.load_state_dict(r0.state_dict())
    assert torch.equal(single.next_batch()["input_ids"][:4], r0.next_batch()["input_ids"])


def test_causal_eval_and_errors(tmp_path, wp):
    src = causal(batch_size=32)
    ev = list(src.eval_batches())
    assert [b["input_ids"].shape[0] for b in ev] == [32, 32, 32, 4]
    assert torch.equal(torch.cat([b["input_ids"][:, 0] for b in ev]), torch.arange(0, 1000, 10))
    assert same(list(src.eval_batches(2)), ev[:2])
    with pytest.raises(ValueError, match="cannot fill"):
        CausalLMBatches(np.arange(5), 2, seq_len=8)
    with pytest.raises(ValueError, match="seq_len"):
        CausalLMBatches(STREAM, 2, seq_len=1)
    with pytest.raises(ValueError, match="data changed"):
        CausalLMBatches(STREAM[:500], 2, seq_len=11).load_state_dict(src.state_dict())
    with pytest.raises(ValueError, match="rank"):
        src.shard(2, 2)
    # from a token file (path or object) and through the model
    from attnkit.models import CausalLM, CausalLMConfig

    tf = TokenFile.build([topics[k] for k in sorted(topics)[:5]], wp, tmp_path / "t.bin")
    for source in (tf, tmp_path / "t.bin", torch.from_numpy(tf.tokens.astype(np.int64))):
        b = CausalLMBatches(source, 2, seq_len=16, seed=0).next_batch()
        assert b["input_ids"].shape == (2, 16) and b["input_ids"].dtype == torch.long
    model = CausalLM(CausalLMConfig.preset("gpt2-tiny", vocab_size=wp.vocab_size))
    assert torch.isfinite(model(**b).loss)


# ---- masked LM ------------------------------------------------------------------------------


def mlm_stream(wp, n=30_000):
    rng = np.random.default_rng(0)
    ids = rng.integers(5, wp.vocab_size, n)
    ids[::37] = wp.sep_id  # document separators inside the packed stream
    return ids


def test_mlm_masking_statistics(wp):
    src = MaskedLMBatches(mlm_stream(wp), wp, batch_size=16, seq_len=64, seed=0)
    assert isinstance(src, BatchSource)
    batches = take(src, 30)
    ids = torch.cat([b["input_ids"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    assert (torch.cat([b["attention_mask"] for b in batches]) == 1).all()
    assert (ids[:, 0] == wp.cls_id).all() and (ids[:, -1] == wp.sep_id).all()
    specials = torch.tensor(sorted(wp.all_special_ids))
    selected = labels != IGNORE_INDEX
    original = torch.where(selected, labels, ids)
    eligible = ~torch.isin(original, specials)
    assert not (selected & ~eligible).any()  # specials (CLS/SEP/separators) never selected
    assert (ids[~selected] == original[~selected]).all()
    frac = selected.sum() / eligible.sum()
    assert abs(frac - 0.15) < 0.01
    n = selected.sum()
    masked = (ids == wp.mask_id) & selected
    unchanged = (ids == original) & selected
    randomised = selected & ~masked & ~unchanged
    assert abs(masked.sum() / n - 0.8) < 0.02
    assert abs(unchanged.sum() / n - 0.1) < 0.015  # (+1/V from random hits)
    assert abs(randomised.sum() / n - 0.1) < 0.015
    assert not torch.isin(ids[randomised], specials).any()


def test_mlm_determinism_resume_sharding(wp):
    stream = mlm_stream(wp, 5000)

    def make(seed=0, batch_size=4, **kw):
        return MaskedLMBatches(stream, wp, batch_size, seq_len=32, seed=seed, **kw)

    assert same(take(make(), 3), take(make(), 3))
    a, b = make(seed=0).next_batch(), make(seed=1).next_batch()
    assert not torch.equal(a["labels"], b["labels"])
    check_resume(make, k=4, m=8)
    check_sharding(make, world=2, steps=60)  # 60 × 8 > 161 windows: crosses epochs
    ev1, ev2 = list(make().eval_batches(3)), list(make().eval_batches(3))
    assert same(ev1, ev2)
    from attnkit.models import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig.preset("bert-tiny", vocab_size=wp.vocab_size))
    assert torch.isfinite(model(**a).loss)


def test_mlm_tiny_rows_always_have_a_target(wp):
    src = MaskedLMBatches(mlm_stream(wp, 400), wp, batch_size=8, seq_len=4, seed=0)
    for b in take(src, 10):
        assert ((b["labels"] != IGNORE_INDEX).sum(1) >= 1).all()


# ---- seq2seq ----------------------------------------------------------------------------------

PAIRS = [(f"source sentence number {i} " + "with words " * (i % 5),
          f"target {i} " + "more " * (i % 7)) for i in range(23)]


def test_seq2seq_layout(wp, tmp_path):
    src = Seq2SeqBatches(PAIRS, wp, batch_size=5, seed=0, max_source_len=12,
                         max_target_len=6, shuffle=False)
    b = src.next_batch()
    assert isinstance(src, BatchSource)
    assert set(b) == {"input_ids", "attention_mask", "decoder_input_ids", "labels"}
    for i in range(5):
        n = int(b["attention_mask"][i].sum())
        assert b["input_ids"][i, n - 1] == wp.sep_id  # end id (WordPiece: [SEP])
        assert (b["input_ids"][i, n:] == wp.pad_id).all()
        assert b["input_ids"][i, :n - 1].tolist() == wp.encode(PAIRS[i][0])[:11]
        tgt = [t for t in b["labels"][i].tolist() if t != IGNORE_INDEX]
        assert tgt == wp.encode(PAIRS[i][1])[:5] + [wp.sep_id]
    assert b["input_ids"].shape[1] <= 12 and b["labels"].shape[1] <= 6
    dec = b["decoder_input_ids"]
    assert (dec[:, 0] == wp.pad_id).all()  # decoder start defaults to pad (T5)
    shifted = b["labels"][:, :-1].masked_fill(b["labels"][:, :-1] == IGNORE_INDEX, wp.pad_id)
    assert torch.equal(dec[:, 1:], shifted)
    from attnkit.models import Seq2SeqConfig, Seq2SeqLM

    model = Seq2SeqLM(Seq2SeqConfig.preset("t5-tiny", vocab_size=wp.vocab_size))
    assert torch.isfinite(model(**b).loss)

    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps({"src": s, "tgt": t}) + "\n" for s, t in PAIRS))
    loaded = Seq2SeqBatches.from_file(p, wp, 5, source_column="src", target_column="tgt",
                                      max_source_len=12, max_target_len=6, shuffle=False)
    assert same([loaded.next_batch()], [b])


def test_seq2seq_resume_and_sharding(wp):
    def make(seed=0, batch_size=3, **kw):
        return Seq2SeqBatches(PAIRS, wp, batch_size, seed, **kw)

    check_resume(make)
    check_sharding(make, world=2, steps=10)  # padded to the global batch's longest


# ---- classification -------------------------------------------------------------------------


def write_csv(path, rows):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["sentence", "other", "label"])
        w.writeheader()
        w.writerows(rows)


ROWS = [{"sentence": f"this is sentence {i} " + "word " * (i % 9), "other": f"pair {i}",
         "label": ["neg", "pos", "neutral"][i % 3]} for i in range(20)]


def test_classification_from_csv(wp, tmp_path):
    path = tmp_path / "train.csv"
    write_csv(path, ROWS)
    src = ClassificationBatches.from_file(path, wp, 4, text_column="sentence",
                                          text_pair_column="other", max_len=16, shuffle=False)
    assert isinstance(src, BatchSource)
    assert src.label_map == {"neg": 0, "neutral": 1, "pos": 2} and src.num_labels == 3
    assert src.labels == ["neg", "neutral", "pos"]
    b = src.next_batch()
    assert b["labels"].tolist() == [0, 2, 1, 0]
    ids, types, mask = b["input_ids"][0], b["token_type_ids"][0], b["attention_mask"][0]
    n = int(mask.sum())
    assert ids[0] == wp.cls_id and ids[n - 1] == wp.sep_id and n <= 16
    first_sep = ids.tolist().index(wp.sep_id)
    assert ids[:first_sep].tolist() == [wp.cls_id] + wp.encode(ROWS[0]["sentence"])[:first_sep - 1]
    assert types[:first_sep + 1].eq(0).all() and types[first_sep + 1:n].eq(1).all()
    assert ids[first_sep + 1:n - 1].tolist() == wp.encode("pair 0")  # the short side is kept
    from attnkit.models import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(
        BertConfig.preset("bert-tiny", vocab_size=wp.vocab_size, num_labels=src.num_labels))
    assert torch.isfinite(model(**b).loss)

    # a validation set reuses the training map; unknown labels and columns are errors
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"text": "x", "label": "pos"}) + "\n")
    v = ClassificationBatches.from_file(val, wp, 1, label_map=src.label_map)
    assert v.next_batch()["labels"].tolist() == [2]
    val.write_text(json.dumps({"text": "x", "label": "angry"}) + "\n")
    with pytest.raises(ValueError, match="not in label_map"):
        ClassificationBatches.from_file(val, wp, 1, label_map=src.label_map)
    with pytest.raises(ValueError, match="no column 'sentence'"):
        ClassificationBatches.from_file(val, wp, 1, text_column="sentence")


def test_classification_resume_sharding_and_label_maps(wp):
    assert build_label_map([2, 10, 1]) == {"1": 0, "2": 1, "10": 2}
    assert build_label_map(["b", "a"]) == {"a": 0, "b": 1}
    texts, labels = [r["sentence"] for r in ROWS], [r["label"] for r in ROWS]

    def make(seed=0, batch_size=3, **kw):
        return ClassificationBatches(texts, labels, wp, batch_size, seed, **kw)

    check_resume(make)
    check_sharding(make, world=2, steps=9)


# ---- extractive QA ----------------------------------------------------------------------------

CONTEXT = ("The Python Language Reference describes the exact syntax and core semantics of the "
           "language. It is terse, but attempts to be exact and complete. The semantics of "
           "non-essential built-in object types and of the built-in functions and modules are "
           "described in The Python Standard Library.")
QAS = [("What does the reference describe?", "core semantics"),
       ("How is it written?", "terse"),
       ("Where are built-in functions described?", "The Python Standard Library"),
       ("What does the reference attempt?", "exact and complete")]


def squad_file(tmp_path):
    qas = [{"id": f"q{i}", "question": q,
            "answers": [{"text": a, "answer_start": CONTEXT.index(a)}]}
           for i, (q, a) in enumerate(QAS)]
    qas.append({"id": "impossible", "question": "Who wrote it?", "answers": [],
                "is_impossible": True})
    data = {"version": "v2.0", "data": [{"title": "ref", "paragraphs": [
        {"context": CONTEXT, "qas": qas}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data))
    return path


def test_qa_spans_map_back_to_answers(wp, tmp_path):
    path = squad_file(tmp_path)
    examples = load_squad(path)
    assert len(examples) == 5 and examples[-1].answers == ()
    src = SpanQABatches(path, wp, batch_size=4, max_len=48, doc_stride=8, shuffle=False)
    assert isinstance(src, BatchSource)
    by_example: dict[int, list] = {}
    for f in src.features:
        by_example.setdefault(f.example_index, []).append(f)
        assert len(f.input_ids) <= 48 and f.input_ids[0] == wp.cls_id
    for i, (_, answer) in enumerate(QAS):
        feats = by_example[i]
        assert len(feats) > 1  # the context needs several windows ...
        assert all(len(f.input_ids) == 48 for f in feats)  # ... all full (the last end-aligned)
        assert feats[-1].offsets[-2][1] == len(CONTEXT)  # ... the last ending at the end
        hits = [f for f in feats if f.start > 0]
        assert hits, f"no window holds {answer!r}"
        for f in hits:
            assert src.answer_text(f, f.start, f.end) == answer
            assert f.token_type_ids[f.start] == 1 and f.start <= f.end
        assert all(f.end == 0 for f in feats if f.start == 0)
    assert all(f.start == f.end == 0 for f in by_example[4])  # unanswerable -> CLS
    b = src.next_batch()
    assert b["labels"].shape == (4, 2) and set(b) == {"input_ids", "attention_mask",
                                                      "token_type_ids", "labels"}
    from attnkit.models import BertConfig, BertForQuestionAnswering

    model = BertForQuestionAnswering(BertConfig.preset("bert-tiny", vocab_size=wp.vocab_size))
    assert torch.isfinite(model(**b).loss)


def test_qa_flat_format_resume_sharding(wp, tmp_path):
    flat = tmp_path / "flat.jsonl"
    flat.write_text("".join(json.dumps({
        "id": str(i), "question": q, "context": CONTEXT,
        "answers": {"text": [a], "answer_start": [CONTEXT.index(a) + 1]}}) + "\n"  # off by 1
        for i, (q, a) in enumerate(QAS)))
    examples = load_squad(flat)
    assert examples[0] == QAExample("0", QAS[0][0], CONTEXT,
                                    (("core semantics", CONTEXT.index("core semantics") + 1),))
    src = SpanQABatches(examples, wp, batch_size=2, max_len=384)
    assert src.num_examples == 4  # one window each
    for f in src.features:  # the misplaced answer_start is re-located
        assert src.answer_text(f, f.start, f.end) == QAS[f.example_index][1]

    def make(seed=0, batch_size=2, **kw):
        return SpanQABatches(examples, wp, batch_size, seed, max_len=24, doc_stride=6, **kw)

    check_resume(make)
    check_sharding(make, world=2, steps=10)


def test_answer_token_span():
    offsets = [(0, 3), (4, 9), (9, 12), (13, 14)]
    assert answer_token_span(offsets, 4, 12) == (1, 2)
    assert answer_token_span(offsets, 5, 10) == (1, 2)  # partial tokens are included
    assert answer_token_span(offsets, 3, 4) is None  # whitespace only
    assert answer_token_span(offsets, 20, 25) is None
