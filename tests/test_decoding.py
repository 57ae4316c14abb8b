"""The static-shape decoder against the model's own cached forward and full recomputation.

Every case generates with the three paths of :func:`attnkit.generate.generate` — the
:class:`~attnkit.decoding.StaticDecoder` step, ``static_cache=False`` (the model's forward
with growing caches) and ``use_cache=False`` (the whole sequence each step, the reference) —
and requires the same tokens, plus logits within fp32 rounding of the model's forward.
"""

from __future__ import annotations

import pytest
import torch

from attnkit.decoding import PACK_MIN_ROWS, StaticDecoder, _can_pack, supports
from attnkit.generate import generate, left_pad
from attnkit.models import CausalLM, CausalLMConfig
from attnkit.sampling import GenerationConfig

V = 256
# four rows: the batch at which the decoder packs its weights for MKL (PACK_MIN_ROWS)
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4, 5], [100, 101, 102, 103, 104], [42, 17]]
CASES = {
    "gpt2-tiny (learned positions)": dict(preset="gpt2-tiny"),
    "llama-tiny (RoPE, GQA, RMSNorm, SwiGLU)": dict(preset="llama-tiny"),
    "llama-tiny, sliding window 4": dict(preset="llama-tiny", sliding_window=4),
    "sinusoidal, post-norm, exact GELU": dict(preset="gpt2-tiny", position="sinusoidal",
                                              norm_position="post", activation="gelu"),
    "no positions, MQA, ReLU": dict(preset="llama-tiny", position="none", n_kv_heads=1,
                                    activation="relu"),
}


def _model(preset: str, **overrides) -> CausalLM:
    torch.manual_seed(0)
    cfg = CausalLMConfig.preset(preset, **overrides)
    # weights far from the init: sharp, varied distributions, so a wrong step changes tokens
    m = CausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.1))
    return m


def _three_ways(m: CausalLM, prompts, **kw) -> list[list[list[int]]]:
    return [generate(m, prompts, GenerationConfig(**kw)),
            generate(m, prompts, GenerationConfig(static_cache=False, **kw)),
            generate(m, prompts, GenerationConfig(use_cache=False, **kw))]


@pytest.mark.parametrize("case", list(CASES))
def test_static_decoder_tokens_equal_the_reference_paths(case):
    m = _model(**CASES[case])
    assert supports(m) is None
    static, dynamic, uncached = _three_ways(m, PROMPTS, max_new_tokens=12)
    assert static == dynamic == uncached
    assert [len(r) for r in static] == [12] * len(PROMPTS)
    # an EOS that stops row 1 early while others run on (padding fed, masked)
    row = static[1]
    k = next((i for i in range(1, 12) if row[i] not in row[:i]), 0)
    s, d, u = _three_ways(m, PROMPTS, max_new_tokens=12, eos_token_id=row[k])
    assert s == d == u and len(s[1]) == k + 1
    # seeded sampling draws the same numbers in the same order on every path
    s, d, u = _three_ways(m, PROMPTS, max_new_tokens=10, temperature=0.9, top_k=20, seed=3)
    assert s == d == u


@pytest.mark.parametrize("case", list(CASES))
def test_static_step_logits_match_the_model_forward(case):
    """Logits of every step equal the last-position logits of the model over the whole
    (left-padded) sequence so far."""
    m = _model(**CASES[case])
    ids, mask = left_pad(PROMPTS)
    B, L = ids.shape
    dec = StaticDecoder(m, B, L + 6)
    assert bool(dec.packed) == _can_pack(m)  # B = 4 rows: packed weights where MKL has them
    feed = torch.tensor([True, False, True, True])  # row 1 pads from the first step on
    with torch.no_grad():
        got = dec.prefill(ids, mask)
        for t in range(6):
            want = m(ids, attention_mask=mask).logits[:, -1]
            rows = mask[:, -1] if t else torch.ones(B, dtype=torch.bool)  # fed rows
            torch.testing.assert_close(got[rows], want[rows], atol=2e-5, rtol=1e-5)
            nxt = got.argmax(-1)
            got = dec.step(nxt, feed)
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, feed[:, None]], 1)


@pytest.mark.skipif(not _can_pack(_model("gpt2-tiny")), reason="no MKL packed GEMM here")
def test_packed_weights_equal_plain_linear():
    m = _model("llama-tiny")
    ids, mask = left_pad(PROMPTS)
    B, L = ids.shape
    assert B >= PACK_MIN_ROWS
    a, b = StaticDecoder(m, B, L + 4, pack=True), StaticDecoder(m, B, L + 4, pack=False)
    assert len(a.packed) == sum(isinstance(x, torch.nn.Linear) for x in m.modules())
    assert not b.packed and not StaticDecoder(m, 2, L + 4).packed  # too few rows: not packed
    with torch.no_grad():
        la, lb = a.prefill(ids, mask), b.prefill(ids, mask)
        for _ in range(4):
            nxt = la.argmax(-1)
            feed = torch.ones(B, dtype=torch.bool)
            la, lb = a.step(nxt, feed), b.step(nxt, feed)
            torch.testing.assert_close(la, lb, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pack=True needs eager"):
        StaticDecoder(m, B, L + 4, pack=True, compile=True)


def test_unsupported_models_fall_back_to_the_model_forward():
    m = _model("gpt2-tiny", position="alibi")
    assert "alibi" in supports(m)
    with pytest.raises(ValueError, match="cannot decode this model"):
        StaticDecoder(m, 1, 8)
    a = generate(m, PROMPTS, GenerationConfig(max_new_tokens=6))
    b = generate(m, PROMPTS, GenerationConfig(max_new_tokens=6, use_cache=False))
    assert a == b
    assert "not a CausalLM" in supports(torch.nn.Linear(2, 2))
    # a config field the step does not know (one added later): unsupported unless default
    import dataclasses

    @dataclasses.dataclass
    class Later(CausalLMConfig):
        attention_kind: str = "softmax"

    cfg = CausalLMConfig.preset("gpt2-tiny")
    m = CausalLM(Later(**dataclasses.asdict(cfg)))
    assert supports(m) is None
    m.config.attention_kind = "something new"
    assert "attention_kind" in supports(m)


def test_static_decoder_bounds():
    m = _model("gpt2-tiny")
    dec = StaticDecoder(m, 1, 4)
    with pytest.raises(ValueError, match="no room"):
        dec.prefill(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool))
    with torch.no_grad():
        dec.prefill(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool))
        dec.step(torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.bool))
        with pytest.raises(ValueError, match="full"):
            dec.step(torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.bool))


@pytest.mark.slow
def test_compiled_static_decoder_equals_eager():
    """``compile=True``: one graph for every step (no recompiles), the same tokens."""
    import torch._dynamo

    m = _model("llama-tiny", sliding_window=4)
    want = generate(m, PROMPTS, GenerationConfig(max_new_tokens=10, use_cache=False))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = generate(m, PROMPTS, GenerationConfig(max_new_tokens=10, compile=True))
        again = generate(m, PROMPTS, GenerationConfig(max_new_tokens=10, compile=True))
    assert got == again == want
