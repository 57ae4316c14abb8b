"""Generation: cached == uncached decoding, left padding, processors, sampling, stopping,
streaming, beam search, and parity with transformers' ``generate``."""

from __future__ import annotations

import io
import itertools

import pytest
import torch

from attnkit.generate import (
    BeamSearchOutput,
    GenerationConfig,
    beam_search,
    fill_mask,
    generate,
    generate_seq2seq,
    left_pad,
    reorder_caches,
    stream_to_terminal,
)
from attnkit.models.causal_lm import CausalLM, CausalLMConfig
from attnkit.models.seq2seq import Seq2SeqConfig, Seq2SeqLM
from attnkit.sampling import (
    apply_temperature,
    min_p_filter,
    process_logits,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)

V = 256
T5_V = 24
T5_EOS = 8  # a token the random T5 below emits now and then, so EOS paths get exercised
INF = float("-inf")


def _causal(preset: str = "gpt2-tiny", **overrides) -> CausalLM:
    overrides.setdefault("init_std", 0.2)  # decisive logits: no near-ties in greedy decoding
    return CausalLM(CausalLMConfig.preset(preset, **overrides)).eval()


def _t5(seed: int = 0, **overrides) -> Seq2SeqLM:
    """A tiny untied T5 with large random weights (default init decodes one token forever)."""
    torch.manual_seed(seed)
    kw = dict(vocab_size=T5_V, d_model=32, n_heads=4, d_ff=48, head_dim=8, dropout=0.0,
              relative_num_buckets=8, relative_max_distance=16, tie_embeddings=False,
              scale_embeddings="none", eos_token_id=T5_EOS)
    m = Seq2SeqLM(Seq2SeqConfig.preset("t5-tiny", **{**kw, **overrides})).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
        m.embed.weight.normal_(0, 1)
    return m


def _t5_inputs(B: int = 4, Ls: int = 9, V: int = T5_V):
    ids = torch.randint(2, V, (B, Ls))
    am = torch.ones(B, Ls, dtype=torch.long)
    am[1, 6:] = 0
    return ids, am


def _seq_logprob(m: Seq2SeqLM, ids, am, tokens: list[int]) -> float:
    """log p(tokens | x) under teacher forcing, for one input row."""
    start = m.config.decoder_start_token_id
    dec = torch.tensor([[start, *tokens[:-1]]])
    with torch.no_grad():
        logp = m(ids[None], am[None], dec).logits.float().log_softmax(-1)[0]
    return float(logp[torch.arange(len(tokens)), torch.tensor(tokens)].sum())


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4, 5], [100, 101, 102, 103, 104]]
CAUSAL_CASES = {
    "gpt2-tiny": dict(preset="gpt2-tiny"),
    # GQA (2 kv heads for 4 query heads) and a window of 4 < the 12 generated tokens
    "llama-tiny-gqa-window4": dict(preset="llama-tiny", sliding_window=4, n_kv_heads=2),
}


# ---- cached == uncached ---------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CAUSAL_CASES))
def test_causal_cached_equals_uncached(case):
    m = _causal(**CAUSAL_CASES[case])
    assert m.config.n_kv_heads is None or m.config.n_kv_heads < m.config.n_heads
    ids = torch.randint(0, V, (2, 5))
    cfg = GenerationConfig(max_new_tokens=12)
    cached = generate(m, ids, cfg)
    uncached = generate(m, ids, GenerationConfig(max_new_tokens=12, use_cache=False))
    assert cached == uncached and [len(r) for r in cached] == [12, 12]


@pytest.mark.parametrize("eos", [(), None])  # no EOS: full length; model EOS: rows stop early
def test_t5_cached_equals_uncached(eos):
    m = _t5()
    ids, am = _t5_inputs()
    cached = generate_seq2seq(m, ids, am, GenerationConfig(max_new_tokens=10, eos_token_id=eos))
    uncached = generate_seq2seq(m, ids, am, GenerationConfig(max_new_tokens=10,
                                                             eos_token_id=eos, use_cache=False))
    assert cached == uncached
    if eos is None:  # some row stopped on EOS (included), some ran to max_new_tokens
        assert any(r[-1] == T5_EOS and len(r) < 10 for r in cached)
        assert any(len(r) == 10 for r in cached)


# ---- batching -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CAUSAL_CASES))
def test_left_padded_batch_equals_each_prompt_alone(case):
    m = _causal(**CAUSAL_CASES[case])
    for use_cache in (True, False):
        cfg = GenerationConfig(max_new_tokens=8, use_cache=use_cache)
        batched = generate(m, PROMPTS, cfg)
        alone = [generate(m, [p], cfg)[0] for p in PROMPTS]
        assert batched == alone
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    assert ids.shape == (3, 7) and mask.sum(1).tolist() == [7, 3, 5]
    assert generate(m, ids, GenerationConfig(max_new_tokens=8), attention_mask=mask) == batched


def test_eos_stops_one_row_while_others_continue():
    m = _causal("llama-tiny", sliding_window=4)
    free = generate(m, PROMPTS, GenerationConfig(max_new_tokens=10))
    # an EOS that row 0 emits at step k (first occurrence) and the other rows never emit
    k, eos = next((k, t) for k, t in enumerate(free[0])
                  if k > 1 and t not in free[0][:k] and all(t not in r for r in free[1:]))
    calls = []
    for use_cache in (True, False):
        calls.clear()
        cfg = GenerationConfig(max_new_tokens=10, eos_token_id=eos, use_cache=use_cache)
        got = generate(m, PROMPTS, cfg, stream=lambda row, toks: calls.append((row, toks)))
        assert got == [free[0][:k + 1], *free[1:]]
        # streaming saw every token of every row, one per step, in order
        for row in range(3):
            assert [t for r, ts in calls if r == row for t in ts] == got[row]
        assert all(len(ts) == 1 for _, ts in calls)


def test_stop_strings():
    m = _causal()
    decode = lambda ids: "".join(chr(97 + t % 26) for t in ids)  # noqa: E731
    free = generate(m, PROMPTS[:2], GenerationConfig(max_new_tokens=12))
    text = decode(free[0])
    stop = text[4:6]
    cut = next(i for i in range(1, 13) if stop in decode(free[0][:i]))
    got = generate(m, PROMPTS[:2], GenerationConfig(max_new_tokens=12, stop_strings=[stop]),
                   decode=decode)
    assert got[0] == free[0][:cut] and decode(got[0]).endswith(stop)
    assert got[1] == free[1][:len(got[1])]  # row 1: same tokens, stopped by its own rules
    if stop not in decode(free[1]):
        assert got[1] == free[1]
    with pytest.raises(ValueError, match="decode"):
        generate(m, PROMPTS, GenerationConfig(stop_strings=("x",)))


# ---- processors -----------------------------------------------------------------------------


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.5, 2.0], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    for k in (1, 2, 3, 4, 6):
        out = top_k_filter(logits, k)
        assert (out > INF).sum(-1).tolist() == [k, k]  # ties at the cut: still exactly k
        kept = out > INF
        assert torch.equal(out[kept], logits[kept])
    assert (top_k_filter(logits, 2)[1] > INF).tolist() == [True, True, False, False, False, False]
    assert torch.equal(top_k_filter(logits, 100), logits)


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # sorted: 0.5, 0.3, 0.15, 0.05
    logits = probs.log()
    kept = lambda p: (top_p_filter(logits, p) > INF)[0].tolist()  # noqa: E731
    assert kept(0.3) == [False, True, False, False]  # 0.5 >= 0.3 alone
    assert kept(0.75) == [False, True, False, True]  # 0.5 + 0.3 >= 0.75
    assert kept(0.9) == [False, True, True, True]  # 0.5 + 0.3 + 0.15 >= 0.9
    assert kept(0.99) == [True] * 4
    assert kept(1e-6) == [False, True, False, False]  # the top token always survives
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    out = top_p_filter(logits, 0.75)
    torch.testing.assert_close(out.softmax(-1), torch.tensor([[0, 0.625, 0, 0.375]]))


def test_min_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    kept = lambda mp: (min_p_filter(probs.log(), mp) > INF)[0].tolist()  # noqa: E731
    assert kept(0.0) == [True] * 4
    assert kept(0.2) == [False, True, True, True]  # p >= 0.1
    assert kept(0.5) == [False, True, False, True]  # p >= 0.25
    assert kept(1.0) == [False, True, False, False]


def test_repetition_penalty_formula_and_temperature():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.0]])
    seen = torch.tensor([[True, True, False, False, True]])
    out = repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0, 0.0]]  # l/θ if l > 0 else l·θ, seen only
    ids = torch.tensor([[1, 0, 4, 4, -1]])  # token ids (duplicates, -1 = padding)
    assert torch.equal(repetition_penalty(logits, ids, 2.0), out)
    assert torch.equal(repetition_penalty(logits, seen, 1.0), logits)
    assert torch.equal(apply_temperature(logits, 0.5), logits * 2)
    cfg = GenerationConfig(temperature=0.5, top_k=2, repetition_penalty=2.0)
    want = top_k_filter(repetition_penalty(logits, seen, 2.0) / 0.5, 2)
    assert torch.equal(process_logits(logits, cfg, seen), want)
    # greedy applies only the repetition penalty
    assert torch.equal(process_logits(logits, GenerationConfig(repetition_penalty=2.0), seen), out)


def test_repetition_penalty_in_generate():
    m = _causal()
    prompt = [[7, 7, 9]]
    free = generate(m, prompt, GenerationConfig(max_new_tokens=8))
    # a huge penalty forbids every token already present: all new tokens are distinct
    got = generate(m, prompt, GenerationConfig(max_new_tokens=8, repetition_penalty=1e6))[0]
    assert len(set(got)) == 8 and not set(got) & {7, 9}
    assert got != free[0] or len(set(free[0])) == 8


# ---- sampling -------------------------------------------------------------------------------


def test_temperature_zero_is_greedy_and_seeded_sampling_reproducible():
    m = _causal("llama-tiny")
    greedy = generate(m, PROMPTS, GenerationConfig(max_new_tokens=10))
    # reference greedy: argmax of the full-sequence logits
    ref = []
    for p in PROMPTS:
        ids = torch.tensor([p])
        for _ in range(10):
            with torch.no_grad():
                ids = torch.cat([ids, m(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
        ref.append(ids[0, len(p):].tolist())
    assert greedy == ref
    cold = GenerationConfig(max_new_tokens=10, temperature=1e-6, seed=3)
    assert generate(m, PROMPTS, cold) == greedy  # T -> 0 concentrates on the argmax
    assert generate(m, PROMPTS, GenerationConfig(max_new_tokens=10, temperature=1.0, top_k=1,
                                                 seed=3)) == greedy
    hot = dict(max_new_tokens=10, temperature=1.5, top_p=0.95, min_p=0.01)
    a = generate(m, PROMPTS, GenerationConfig(seed=1, **hot))
    b = generate(m, PROMPTS, GenerationConfig(seed=1, **hot))
    c = generate(m, PROMPTS, GenerationConfig(seed=2, **hot))
    assert a == b and a != c and a != greedy
    # the seed is private: the global RNG state does not matter
    torch.manual_seed(123)
    assert generate(m, PROMPTS, GenerationConfig(seed=1, **hot)) == a
    # seq2seq sampling is seeded the same way
    t5 = _t5()
    ids, am = _t5_inputs()
    s = GenerationConfig(max_new_tokens=6, temperature=1.0, seed=5, eos_token_id=())
    assert generate_seq2seq(t5, ids, am, s) == generate_seq2seq(t5, ids, am, s)


def test_sampled_tokens_respect_top_k():
    m = _causal()
    ids = torch.tensor([PROMPTS[0]])
    allowed = []
    with torch.no_grad():
        logits = m(ids).logits[0, -1]
    allowed = set(logits.topk(3).indices.tolist())
    for seed in range(8):
        tok = generate(m, ids, GenerationConfig(max_new_tokens=1, temperature=2.0, top_k=3,
                                                seed=seed))[0][0]
        assert tok in allowed


# ---- beam search ----------------------------------------------------------------------------


def test_beam_search_one_beam_is_greedy():
    m = _t5()
    ids, am = _t5_inputs()
    greedy = generate_seq2seq(m, ids, am, GenerationConfig(max_new_tokens=10))
    beam = beam_search(m, ids, am, num_beams=1, max_new_tokens=10)
    assert isinstance(beam, BeamSearchOutput) and beam.sequences == greedy
    assert generate_seq2seq(m, ids, am, GenerationConfig(max_new_tokens=10, num_beams=1)) == greedy


def test_beam_search_beats_greedy_and_reports_its_score():
    """Beam search is not guaranteed to beat greedy in general (a prefix pruned at step t
    may have had the best continuation; with this model and 3 beams, row 0 loses greedy's
    prefix at step 5), but it is for 2 tokens (greedy's first token is always kept, and
    every continuation of the kept beams is scored), and 8 beams do on this model."""
    m = _t5()
    ids, am = _t5_inputs()
    for N, K, lp in ((2, 2, 1.0), (2, 3, 0.0), (10, 8, 1.0), (10, 8, 0.0)):
        greedy = generate_seq2seq(m, ids, am, GenerationConfig(max_new_tokens=N))
        out = beam_search(m, ids, am, num_beams=K, max_new_tokens=N, length_penalty=lp)
        assert out.sequences == generate_seq2seq(
            m, ids, am, GenerationConfig(max_new_tokens=N, num_beams=K, length_penalty=lp))
        for b in range(ids.shape[0]):
            seq, g = out.sequences[b], greedy[b]
            score = _seq_logprob(m, ids[b], am[b], seq) / len(seq) ** lp
            assert out.scores[b] == pytest.approx(score, abs=1e-4)  # reported = recomputed
            assert out.scores[b] >= _seq_logprob(m, ids[b], am[b], g) / len(g) ** lp - 1e-5
            assert len(out.hypotheses[b]) == K  # early stopping: num_beams finished ones
            scores = [s for s, _ in out.hypotheses[b]]
            assert scores == sorted(scores, reverse=True)
            assert all(h[-1] == T5_EOS or len(h) == N for _, h in out.hypotheses[b])
        if N == 10:
            assert out.sequences != greedy  # the search found something greedy did not


def test_beam_search_with_enough_beams_is_exact():
    """With num_beams = V^(N-1) and no EOS nothing is ever pruned: beam search = argmax over
    all V^N sequences (brute force)."""
    Vs, N = 6, 3
    m = _t5(vocab_size=Vs, eos_token_id=None)
    ids, am = _t5_inputs(B=2, V=Vs)
    out = beam_search(m, ids, am, num_beams=Vs ** (N - 1), max_new_tokens=N, eos_token_id=())
    seqs = torch.tensor(list(itertools.product(range(Vs), repeat=N)))  # (V^N, N)
    dec = torch.cat([torch.zeros(len(seqs), 1, dtype=torch.long), seqs[:, :-1]], 1)
    for b in range(2):
        with torch.no_grad():
            logp = m(ids[b].expand(len(seqs), -1), am[b].expand(len(seqs), -1), dec
                     ).logits.log_softmax(-1)
        total = logp.gather(-1, seqs[..., None])[..., 0].sum(-1)  # (V^N,)
        best = int(total.argmax())
        assert out.sequences[b] == seqs[best].tolist()
        assert out.scores[b] == pytest.approx(float(total[best]) / N, abs=1e-4)


def test_reorder_caches():
    for m in (_causal("llama-tiny", sliding_window=3), _causal()):  # ring buffer and KVCache
        caches = m.new_caches(3, 8)
        for c in caches:
            c.k.normal_()
            c.v.normal_()
        k0, v0 = caches[1].k.clone(), caches[1].v.clone()
        reorder_caches(caches, torch.tensor([2, 2, 0]))
        assert torch.equal(caches[1].k, k0[[2, 2, 0]]) and torch.equal(caches[1].v, v0[[2, 2, 0]])


# ---- streaming ------------------------------------------------------------------------------


def test_stream_to_terminal_handles_multibyte_pieces():
    text = "héllo € 😀!"
    data = list(text.encode("utf-8"))  # byte-level "tokens": characters split over tokens
    decode = lambda ids: bytes(ids).decode("utf-8", errors="replace")  # noqa: E731
    buf = io.StringIO()
    streamer = stream_to_terminal(decode, file=buf)
    seen = []
    for t in data:
        streamer(0, [t])
        streamer(1, [65])  # other rows are ignored
        seen.append(buf.getvalue())
    assert buf.getvalue() == text and all("\ufffd" not in s for s in seen)
    assert seen[:3] == ["h", "h", "hé"]  # "é" printed only once both its bytes arrived
    streamer.end()
    assert buf.getvalue() == text + "\n"


def test_stream_to_terminal_with_generate():
    m = _causal()
    decode = lambda ids: "".join(chr(97 + t % 26) for t in ids)  # noqa: E731
    buf = io.StringIO()
    out = generate(m, [PROMPTS[0]], GenerationConfig(max_new_tokens=6),
                   stream=stream_to_terminal(decode, file=buf))
    assert buf.getvalue() == decode(out[0])


# ---- config and errors ----------------------------------------------------------------------


@pytest.mark.parametrize("bad, match", [
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-1), "temperature"),
    (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"), (dict(min_p=1.5), "min_p"),
    (dict(repetition_penalty=0), "repetition_penalty"), (dict(stop_strings=[""]), "stop"),
    (dict(num_beams=0), "num_beams"), (dict(num_beams=2, temperature=1.0), "beam"),
])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**bad)


def test_errors():
    m = _causal()
    with pytest.raises(ValueError, match="num_beams"):
        generate(m, PROMPTS, GenerationConfig(num_beams=2))
    with pytest.raises(ValueError, match="at least one token"):
        generate(m, [[1, 2], []])
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(m, [[1] * 100], GenerationConfig(max_new_tokens=40))
    assert GenerationConfig(stop_strings="ab").stop_strings == ("ab",)


# ---- parity with transformers ---------------------------------------------------------------


def test_gpt2_greedy_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    from attnkit.interop.gpt2 import load_gpt2

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  initializer_range=0.2, bos_token_id=None, eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ours = load_gpt2(tmp_path / "hf")
    ids = torch.randint(0, 97, (2, 6))
    want = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                       max_new_tokens=12, pad_token_id=0)[:, 6:].tolist()
    assert generate(ours, ids, GenerationConfig(max_new_tokens=12)) == want
    # left-padded prompts of different lengths, and an EOS that stops rows 0 and 1 early
    prompts = [[5, 6, 7, 8, 9, 10], [3, 4, 5], [50, 51, 52, 53]]
    ids, mask = left_pad(prompts)
    free = generate(ours, prompts, GenerationConfig(max_new_tokens=12))
    for eos in (None, free[1][3]):
        want = hf.generate(ids, attention_mask=mask.long(), do_sample=False, max_new_tokens=12,
                           pad_token_id=0, eos_token_id=eos)[:, ids.shape[1]:].tolist()
        got = generate(ours, prompts, GenerationConfig(max_new_tokens=12, eos_token_id=eos))
        assert [w[:len(g)] for w, g in zip(want, got, strict=True)] == got
        assert all(set(w[len(g):]) <= {0} for w, g in zip(want, got, strict=True))  # HF pads
    assert len(got[0]) < 12 and len(got[1]) < 12 and len(got[2]) == 12


def test_t5_beam_search_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    from attnkit.interop.t5 import load_t5

    torch.manual_seed(2)  # a model whose best hypotheses have varied lengths
    cfg = transformers.T5Config(
        vocab_size=T5_V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
        dropout_rate=0.0, feed_forward_proj="relu", tie_word_embeddings=False,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=T5_EOS)
    hf = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        hf.lm_head.weight = torch.nn.Parameter(torch.randn(T5_V, 32))  # untie (transformers 5)
        for p in hf.parameters():
            p.normal_(0, 1.0 if p.shape == (T5_V, 32) else 0.5)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ours = load_t5(tmp_path / "hf")
    ids, am = _t5_inputs(B=6)
    # EOS: the token this random model emits most often after the first step, so that
    # hypotheses ending on EOS take part (beam search semantics hinge on them)
    free = generate_seq2seq(ours, ids, am, GenerationConfig(max_new_tokens=10, eos_token_id=()))
    eos = max(range(1, T5_V), key=[t for r in free for t in r[1:]].count)
    n_eos, lengths = 0, set()
    for K, lp, es in ((3, 1.0, True), (3, 0.5, True), (2, 2.0, False), (5, 1.0, False)):
        got = beam_search(ours, ids, am, num_beams=K, max_new_tokens=10, length_penalty=lp,
                          eos_token_id=eos, early_stopping=es)
        want = hf.generate(ids, attention_mask=am, num_beams=K, do_sample=False,
                           length_penalty=lp, early_stopping=es, max_new_tokens=10,
                           eos_token_id=eos)
        for b, seq in enumerate(got.sequences):
            # drop decoder_start; shorter rows are filled with `pad_token_id or eos` (= eos
            # when pad is 0, a quirk of HF's _beam_search)
            row = want[b, 1:].tolist()
            assert row[:len(seq)] == seq, (K, lp, es, b, row)
            assert all(t in (0, eos) for t in row[len(seq):]), (K, lp, es, b, row)
            n_eos += seq[-1] == eos
            lengths.add(len(seq))
    assert n_eos > 0 and len(lengths) > 1  # hypotheses ending on EOS took part


# ---- masked LM ------------------------------------------------------------------------------


def test_fill_mask_greedy_is_the_argmax_and_sampling_is_seeded():
    from attnkit.models.bert import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig.preset("bert-tiny", vocab_size=40)).eval()
    MASK = 4
    ids = torch.tensor([[1, 7, MASK, 9, MASK, 2], [1, MASK, 8, 8, 2, 0]])
    am = torch.tensor([[1] * 6, [1] * 5 + [0]])
    with torch.no_grad():
        logits = bert(ids, am).logits
    out = fill_mask(bert, ids, MASK, attention_mask=am)
    where = ids == MASK
    assert torch.equal(out[~where], ids[~where])
    assert torch.equal(out[where], logits[where].argmax(-1))
    cfg = GenerationConfig(temperature=1.0, top_k=3, seed=5)
    a, b = fill_mask(bert, ids, MASK, cfg, attention_mask=am), \
        fill_mask(bert, ids, MASK, cfg, attention_mask=am)
    assert torch.equal(a, b)
    top3 = logits[where].topk(3).indices
    assert (a[where][:, None] == top3).any(-1).all()
    with pytest.raises(ValueError, match="no mask token"):
        fill_mask(bert, ids[:, :1], MASK)

