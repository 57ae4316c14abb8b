"""Synthetic tasks: seeded and deterministic, answers recoverable from the inputs, labels on
the answers only, the batch-source contract (resume, sharding), and the accuracy metric."""

import math

import numpy as np
import pytest
import torch

from attnkit.data.synthetic import (
    BLANK,
    SEP,
    TASKS,
    AnswerAccuracy,
    CopyBatches,
    MQARBatches,
    RetrievalBatches,
    SelectiveCopyBatches,
    answer_accuracy,
)

SMALL = {
    "mqar": dict(seq_len=32, vocab_size=64, kv_pairs=4),
    "copy": dict(seq_len=17, vocab_size=12),
    "selective_copy": dict(seq_len=24, vocab_size=12),
    "retrieval": dict(seq_len=40, vocab_size=32, kv_pairs=3),
}


def make(name, n=200, batch=8, seed=0, **kw):
    return TASKS[name](n, batch, seed, **{**SMALL[name], **kw})


# ---- reference solvers: the answer from the input alone ----------------------------------------


def solve_mqar(ids, D):
    """Each position after the pairs holding a key: the value that followed the key."""
    ids = ids.tolist()
    table = {ids[2 * i]: ids[2 * i + 1] for i in range(D)}
    return {t + 1: table[ids[t]] for t in range(2 * D, len(ids) - 1) if ids[t] in table}


def solve_copy(ids):
    ids = ids.tolist()
    m = ids.index(SEP)
    return {m + 1 + j: ids[j] for j in range(m)}


def solve_selective_copy(ids):
    ids = ids.tolist()
    m = ids.index(SEP)
    tokens = [t for t in ids[:m] if t != BLANK]
    return {m + 1 + j: t for j, t in enumerate(tokens)}


def solve_retrieval(ids):
    ids = ids.tolist()
    L = len(ids)
    assert ids[L - 3] == SEP
    key = ids[L - 2]
    where = [i for i in range(L - 3) if ids[i] == key]
    assert len(where) == 1  # filler never uses key ids: the needle is unique
    return {L - 1: ids[where[0] + 1]}


def solver(name, src):
    return {"mqar": lambda ids: solve_mqar(ids, src.kv_pairs), "copy": solve_copy,
            "selective_copy": solve_selective_copy, "retrieval": solve_retrieval}[name]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_answers_are_recoverable_and_labels_only_on_answers(name):
    src = make(name)
    solve = solver(name, src)
    for _ in range(5):
        b = src.next_batch()
        ids, labels = b["input_ids"], b["labels"]
        assert ids.shape == labels.shape == (8, src.seq_len)
        assert ids.dtype == labels.dtype == torch.int64
        assert int(ids.min()) >= 0 and int(ids.max()) < src.vocab_size
        for row_ids, row_labels in zip(ids, labels, strict=True):
            want = solve(row_ids)
            got = {t: int(v) for t, v in enumerate(row_labels.tolist()) if v != -100}
            assert got == want  # exactly the answer positions, with the right answers
            assert 0 not in got  # position 0 has no prefix to predict it from


def test_answer_counts():
    assert (make("mqar").next_batch()["labels"] != -100).sum(-1).tolist() == [4] * 8
    assert (make("copy").next_batch()["labels"] != -100).sum(-1).tolist() == [8] * 8
    assert (make("selective_copy").next_batch()["labels"] != -100).sum(-1).tolist() == [6] * 8
    assert (make("retrieval").next_batch()["labels"] != -100).sum(-1).tolist() == [1] * 8


@pytest.mark.parametrize("name", sorted(TASKS))
def test_determinism_by_seed_and_split(name):
    a, b = make(name, seed=3), make(name, seed=3)
    for _ in range(3):
        x, y = a.next_batch(), b.next_batch()
        assert torch.equal(x["input_ids"], y["input_ids"])
        assert torch.equal(x["labels"], y["labels"])
    other = make(name, seed=4).next_batch()["input_ids"]
    assert not torch.equal(other, make(name, seed=3).next_batch()["input_ids"])
    # an example is a function of (seed, split, index) alone, whatever the batching
    src = make(name, seed=3)
    ex = src.example(17)
    assert torch.equal(ex[0], make(name, seed=3, batch=3).example(17)[0])
    val = make(name, seed=3, split="val")
    assert not torch.equal(val.example(17)[0], ex[0])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_resume_and_sharding(name):
    src = make(name, n=50, batch=4)
    for _ in range(3):
        src.next_batch()
    state = src.state_dict()
    want = [src.next_batch()["input_ids"] for _ in range(20)]  # crosses an epoch boundary
    again = make(name, n=50, batch=4)
    again.load_state_dict(state)
    assert all(torch.equal(w, again.next_batch()["input_ids"]) for w in want)
    # two ranks of batch 2 = one process of batch 4, row blocks in rank order
    ranks = [make(name, n=50, batch=2, rank=r, world=2) for r in (0, 1)]
    one = make(name, n=50, batch=4)
    for _ in range(4):
        whole = one.next_batch()["input_ids"]
        assert torch.equal(torch.cat([r.next_batch()["input_ids"] for r in ranks]), whole)
    # evaluation walks the examples in order
    val = make(name, n=10, batch=4, split="val", shuffle=False)
    rows = torch.cat([b["input_ids"] for b in val.eval_batches()])
    assert torch.equal(rows, torch.stack([val.example(i)[0] for i in range(10)]))


def test_mqar_follows_zoology():
    """Keys in [1, V/2) and values in [V/2, V), distinct; pairs first; every key queried once
    on an even slot after the pairs; the rest blank."""
    V, L, D = 64, 32, 4
    src = MQARBatches(100, 16, 0, seq_len=L, vocab_size=V, kv_pairs=D)
    ids = src.next_batch()["input_ids"]
    for row in ids.tolist():
        keys, values = row[0:2 * D:2], row[1:2 * D:2]
        assert len(set(keys)) == D and all(1 <= k < V // 2 for k in keys)
        assert len(set(values)) == D and all(V // 2 <= v < V for v in values)
        rest = row[2 * D:]
        queried = [(i, t) for i, t in enumerate(rest) if t != 0]
        assert sorted(t for _, t in queried) == sorted(keys)
        assert all(i % 2 == 0 for i, _ in queried)
    filled = MQARBatches(100, 16, 0, seq_len=L, vocab_size=V, kv_pairs=D, random_fill=True)
    row = filled.next_batch()["input_ids"][0].tolist()
    assert sum(t == 0 for t in row[2 * D:]) < L // 4  # blanks replaced by random ids


def test_mqar_query_slots_follow_the_power_law():
    """The slots of the queries are Zoology's draws without replacement ∝ a·g^(a-1):
    compare the frequency of each slot for the first query with numpy's own
    ``choice(replace=False, p=p)`` (what Zoology calls) over many examples."""
    L, D, a = 24, 2, 0.3  # a larger a than 0.01 so that every slot is visited
    src = MQARBatches(4000, 1, 0, seq_len=L, vocab_size=64, kv_pairs=D, power_a=a)
    space = (L - 2 * D) // 2
    ours = np.zeros(space)
    for i in range(4000):
        ids = src.example(i)[0].tolist()
        first_key = ids[0]
        slot = (ids.index(first_key, 2 * D) - 2 * D) // 2
        ours[slot] += 1
    p = a * np.arange(1, space + 1) ** (a - 1)
    p /= p.sum()
    rng = np.random.default_rng(0)
    theirs = np.bincount([rng.choice(space, size=D, replace=False, p=p)[0]
                          for _ in range(4000)], minlength=space)
    # both estimate p (the first of successive draws): within 4 standard errors
    se = np.sqrt(p * (1 - p) / 4000)
    assert np.all(np.abs(ours / 4000 - p) < 4 * se + 1e-3)
    assert np.all(np.abs(theirs / 4000 - p) < 4 * se + 1e-3)


def test_selective_copy_scatters_tokens_and_retrieval_places_needles():
    sel = SelectiveCopyBatches(50, 50, 1, seq_len=24, vocab_size=12)
    ids = sel.next_batch()["input_ids"]
    context = ids[:, :24 - sel.copy_len - 1]
    assert ((context != 0).sum(-1) == sel.copy_len).all()  # M tokens among blanks
    positions = [tuple(torch.nonzero(r).flatten().tolist()) for r in context]
    assert len(set(positions)) > 40  # the positions vary from example to example
    ret = RetrievalBatches(200, 200, 1, seq_len=40, vocab_size=32, kv_pairs=1)
    ids = ret.next_batch()["input_ids"]
    depth = torch.tensor([r[:37].tolist().index(int(r[38])) for r in ids])
    assert depth.min() < 8 and depth.max() > 28  # needles anywhere in the haystack


@pytest.mark.parametrize("cls, kw, match", [
    (MQARBatches, dict(seq_len=31, vocab_size=64, kv_pairs=2), "even"),
    (MQARBatches, dict(seq_len=32, vocab_size=64, kv_pairs=9), r"seq_len >= 4 \* kv_pairs"),
    (MQARBatches, dict(seq_len=64, vocab_size=64, kv_pairs=4), "vocab_size must exceed"),
    (MQARBatches, dict(seq_len=32, vocab_size=64, kv_pairs=0), "kv_pairs"),
    (MQARBatches, dict(seq_len=32, vocab_size=64, power_a=0.0), "power_a"),
    (CopyBatches, dict(seq_len=16, vocab_size=10, copy_len=8), "copy_len"),
    (RetrievalBatches, dict(seq_len=8, vocab_size=32, kv_pairs=3), "needles need"),
    (RetrievalBatches, dict(seq_len=64, vocab_size=8), "vocab_size must be >= 16"),
    (CopyBatches, dict(seq_len=2, vocab_size=10), "seq_len must be"),
])
def test_bad_parameters_are_clear_errors(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(10, 2, 0, **kw)
    with pytest.raises(ValueError, match="split"):
        CopyBatches(10, 2, 0, seq_len=16, vocab_size=10, split="test")


# ---- the metric -------------------------------------------------------------------------------


def test_answer_accuracy_hand_computed():
    """Two rows, vocabulary 3. Row 0 has answers at t=2 (label 1) and t=3 (label 2); row 1 at
    t=3 (label 0) only. With the causal shift they are predicted by logits[:, 1], [:, 2]."""
    logits = torch.full((2, 4, 3), -5.0)
    argmax = [[0, 1, 0, 2], [1, 1, 1, 2]]  # the prediction at every position
    for b, row in enumerate(argmax):
        for t, v in enumerate(row):
            logits[b, t, v] = 5.0
    labels = torch.tensor([[-100, -100, 1, 2], [-100, -100, -100, 0]])
    acc = answer_accuracy(logits, labels)
    # row 0: logits[0,1] -> 1 == 1 right; logits[0,2] -> 0 != 2 wrong; row 1: logits[1,2]
    # -> 1 != 0 wrong. 1 of 3 answers; no row entirely right.
    assert (acc.correct, acc.answers, acc.exact, acc.examples) == (1, 3, 0, 2)
    assert acc.accuracy == pytest.approx(1 / 3) and acc.exact_match == 0.0
    # without the shift logits[:, t] predicts labels[:, t]: row 0 t=2 -> 0 wrong, t=3 -> 2
    # right; row 1 t=3 -> 2 wrong
    plain = answer_accuracy(logits, labels, shift=False)
    assert (plain.correct, plain.answers, plain.exact, plain.examples) == (1, 3, 0, 2)
    fixed = labels.clone()
    fixed[1, 3] = 1  # now row 1's only answer is right (logits[1, 2] -> 1)
    both = answer_accuracy(logits, fixed)
    assert (both.correct, both.exact) == (2, 1)
    total = acc + both
    assert (total.correct, total.answers, total.exact, total.examples) == (3, 6, 1, 4)
    assert math.isnan(AnswerAccuracy().accuracy)
    with pytest.raises(ValueError, match="logits"):
        answer_accuracy(logits[0], labels)


def test_answer_accuracy_scores_the_positions_of_the_model_loss():
    """The metric's (logit, label) pairs are the ones CausalLM's loss averages over: the
    cross-entropy of exactly those pairs is the model's loss, on every task."""
    import torch.nn.functional as F

    from attnkit.models import CausalLM, CausalLMConfig

    torch.manual_seed(0)
    for name in sorted(TASKS):
        src = make(name, batch=4)
        batch = src.next_batch()
        model = CausalLM(CausalLMConfig(vocab_size=src.vocab_size, max_seq_len=src.seq_len,
                                        d_model=16, n_layers=1, n_heads=2))
        with torch.no_grad():
            out = model(**batch)
        logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
        answer = labels != -100
        ce = F.cross_entropy(logits[answer], labels[answer])
        assert float(ce) == pytest.approx(float(out.loss), rel=1e-5)
        acc = answer_accuracy(out.logits, batch["labels"])
        assert acc.answers == int(answer.sum())
        assert acc.correct == int((logits[answer].argmax(-1) == labels[answer]).sum())
