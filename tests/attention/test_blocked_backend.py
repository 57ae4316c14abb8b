"""The ``blocked`` backend against the ``math`` reference: outputs and q/k/v gradients over
every mask family, GQA/MQA, Lq != Lk, score mods, dtypes, fully masked rows, split rows and
tile chunking; fp64 gradcheck; dispatch and refusals."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from attnkit.attention import attend, backends, explain, masks, score_mods
from attnkit.attention.backends import blocked_backend as bb
from attnkit.attention.backends.blocked_layout import tile_plan
from attnkit.attention.core import Request
from attnkit.attention.score_mods import ScoreMod

L = 77  # not a multiple of any block size
F64 = torch.float64


@pytest.fixture(autouse=True)
def _threads():
    """Tiny tensors: one thread is faster (and immune to a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def small_blocks(monkeypatch):
    """16×16 tiles: many tiles (bands, gathers, padding) even on short sequences."""
    monkeypatch.setattr(bb, "Q_BLOCK", 16)
    monkeypatch.setattr(bb, "KV_BLOCK", 16)


def _qkv(B=2, Hq=4, Hkv=2, Lq=L, Lk=L, D=8, Dv=12, dtype=F64, grad=True):
    def t(*s):
        return torch.randn(*s, dtype=dtype).requires_grad_(grad)

    return t(B, Hq, Lq, D), t(B, Hkv, Lk, D), t(B, Hkv, Lk, Dv)


def _run(name, q, k, v, mask, score_mod=None, scale=0.4):
    out, _ = backends.get(name).forward(q, k, v, mask=mask, score_mod=score_mod, scale=scale,
                                        dropout_p=0.0, return_weights=False)
    return out


def _check(q, k, v, mask=None, score_mod=None, atol=1e-10):
    """Forward and q/k/v gradients of blocked == math (fp64 unless told otherwise)."""
    ref = _run("math", q, k, v, mask, score_mod)
    out = _run("blocked", q, k, v, mask, score_mod)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    grads = torch.autograd.grad(out, (q, k, v), g)
    for name, a, b in zip("qkv", grads, ref_grads, strict=True):
        assert torch.isfinite(a).all(), f"d{name} not finite"
        torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=f"d{name} differs")
    return out, grads


def _doc_ids():
    ids = torch.zeros(2, L, dtype=torch.long)
    ids[0, 20:], ids[0, 50:] = 1, 2
    ids[1, 33:] = 1
    return ids


def _key_mask():
    km = torch.ones(2, L, dtype=torch.bool)
    km[0, 60:] = False
    km[1, 5:9] = False
    return km


PATTERNS = {
    "none": lambda: None,
    "full": masks.full,
    "causal": masks.causal,
    "window_8_0": lambda: masks.sliding_window(8, 0),
    "window_5_5": lambda: masks.sliding_window(5, 5),
    "window_0_12": lambda: masks.sliding_window(0, 12),
    "window_40_3": lambda: masks.sliding_window(40, 3),
    "dilated": lambda: masks.dilated_window(4, 2, dilation=3),
    "strided": lambda: masks.strided(7),
    "fixed": lambda: masks.fixed(8, 2),
    "global|window": lambda: masks.global_tokens([0, 40], length=L) | masks.sliding_window(3, 3),
    "bigbird": lambda: masks.bigbird(16, num_blocks=5, random_blocks=1, seed=3),
    "block_local": lambda: masks.block_local(10),
    "document": lambda: masks.document(_doc_ids()),
    "document&causal": lambda: masks.document(_doc_ids()) & masks.causal(),
    "padding_zero_len": lambda: masks.padding([L, 0]),
    "padding_key_mask": lambda: masks.padding(key_mask=_key_mask()),
    "causal&~block_local": lambda: masks.causal() & ~masks.block_local(4),
    "window|strided": lambda: masks.sliding_window(4, 0) | masks.strided(16),
    "~causal": lambda: ~masks.causal(),
    "dense_head_dependent": lambda: torch.rand(2, 4, L, L) > 0.6,
    "dense_2d": lambda: torch.rand(L, L) > 0.3,
    "dense_key_padding": lambda: _key_mask()[:, None, None, :],
}


@pytest.mark.parametrize("budget", ["default", "split"])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_patterns_match_math(pattern, budget, small_blocks, monkeypatch):
    if budget == "split":  # a few tiles per chunk: long rows are split and merged by lse
        monkeypatch.setattr(bb, "TILE_BUDGET", 1)
    _check(*_qkv(), mask=PATTERNS[pattern]())


@pytest.mark.parametrize("pattern", ["causal", "window_5_5", "global|window", "document"])
def test_default_block_size(pattern):
    mask = (masks.document(torch.randint(0, 3, (2, 150)).sort(-1).values)
            if pattern == "document" else PATTERNS[pattern]())
    _check(*_qkv(B=2, Hq=2, Hkv=2, Lq=150, Lk=150), mask=mask)


def test_many_chunks_match_math(monkeypatch):
    """A tiny budget forces many chunks (and split global rows) at the default block size;
    results must not depend on the chunking."""
    monkeypatch.setattr(bb, "TILE_BUDGET", 1 << 10)
    mask = masks.global_tokens([3]) | masks.sliding_window(20, 0)
    _check(*_qkv(B=2, Hq=8, Hkv=2, Lq=200, Lk=200, D=16, Dv=16), mask=mask)


@pytest.mark.parametrize("lq,lk", [(30, L), (1, L), (L, 30)])
@pytest.mark.parametrize("pattern", ["causal", "window_8_0", "none"])
def test_lq_ne_lk(lq, lk, pattern, small_blocks):
    """Queries are the last Lq positions (bottom-right causal); Lq > Lk has dead rows."""
    _check(*_qkv(Lq=lq, Lk=lk), mask=PATTERNS[pattern]())


@pytest.mark.parametrize("hkv", [2, 1])
@pytest.mark.parametrize("pattern", ["causal", "window_5_5", "dense_head_dependent"])
def test_gqa_mqa(hkv, pattern, small_blocks):
    mask = (torch.rand(2, 8, L, L) > 0.5 if pattern == "dense_head_dependent"
            else PATTERNS[pattern]())
    _check(*_qkv(Hq=8, Hkv=hkv), mask=mask)


@pytest.mark.parametrize("mod", ["softcap", "alibi", "alibi_sym", "bias"])
@pytest.mark.parametrize("pattern", ["causal", "window_8_0", "global|window"])
def test_score_mods(mod, pattern, small_blocks):
    mods = {
        "softcap": lambda: score_mods.softcap(1.5),  # non-additive: grads through tanh
        "alibi": lambda: score_mods.alibi(8),
        "alibi_sym": lambda: score_mods.alibi(8, symmetric=True),
        "bias": lambda: score_mods.bias_from_tensor(torch.randn(2, 8, L, L, dtype=F64)),
    }
    _check(*_qkv(Hq=8, Hkv=2), mask=PATTERNS[pattern](), score_mod=mods[mod]())


def test_score_mod_with_split_rows_and_lq_ne_lk(small_blocks, monkeypatch):
    monkeypatch.setattr(bb, "TILE_BUDGET", 1)
    _check(*_qkv(Hq=4, Hkv=1, Lq=40), mask=masks.causal(), score_mod=score_mods.softcap(2.0))
    _check(*_qkv(Hq=4, Hkv=1, Lq=40), mask=None, score_mod=score_mods.alibi(4))


def test_fully_masked_rows_give_zero_output_and_zero_grads(small_blocks):
    q, k, v = _qkv()
    out, (dq, dk, dv) = _check(q, k, v, mask=masks.padding([L, 0]))
    assert out[1].abs().max() == 0
    assert dq[1].abs().max() == 0 and dk[1].abs().max() == 0 and dv[1].abs().max() == 0
    # Lq > Lk, causal: the first Lq - Lk query rows see no key at all.
    q, k, v = _qkv(Lq=L, Lk=30)
    out, (dq, _, _) = _check(q, k, v, mask=masks.causal())
    assert out[:, :, : L - 30].abs().max() == 0 and dq[:, :, : L - 30].abs().max() == 0


def test_gradcheck_fp64(monkeypatch):
    monkeypatch.setattr(bb, "Q_BLOCK", 8)  # 2 × 3 tiles
    monkeypatch.setattr(bb, "KV_BLOCK", 8)
    q, k, v = _qkv(B=1, Hq=2, Hkv=1, Lq=13, Lk=17, D=3, Dv=2)
    window = masks.sliding_window(3, 1) | masks.global_tokens([0], length=17)
    cases = [(window, None), (masks.causal(), score_mods.softcap(1.0)),
             (masks.padding([6]) | masks.block_local(8), None)]
    for mask, mod in cases:
        def f(q, k, v, mask=mask, mod=mod):
            return _run("blocked", q, k, v, mask, mod)

        assert torch.autograd.gradcheck(f, (q, k, v)), (mask, mod)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision(dtype, small_blocks):
    q, k, v = _qkv(Hq=4, Hkv=2, D=32, Dv=32, dtype=dtype)
    mask = masks.sliding_window(16, 0)
    out = _run("blocked", q, k, v, mask)
    assert out.dtype == dtype
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = _run("math", qd, kd, vd, mask)
    tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (q, k, v), g.to(dtype))
    ref_grads = torch.autograd.grad(ref, (qd, kd, vd), g)
    for a, b in zip(grads, ref_grads, strict=True):
        assert a.dtype == dtype and torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, atol=8 * tol, rtol=8 * tol)


def test_inference_path_and_noncontiguous_inputs(small_blocks):
    mask = masks.sliding_window(6, 1)
    q, k, v = (torch.randn(2, L, 4, 8, dtype=F64).transpose(1, 2) for _ in range(3))
    with torch.no_grad():
        out = _run("blocked", q, k, v, mask)
    torch.testing.assert_close(out, _run("math", q, k, v, mask), atol=1e-12, rtol=0)
    assert out.is_contiguous()


def test_only_requested_gradients(small_blocks):
    q, k, v = _qkv()
    k.requires_grad_(False)
    out = _run("blocked", q, k, v, masks.causal())
    dq, dv = torch.autograd.grad(out.sum(), (q, v))
    ref = _run("math", q, k, v, masks.causal())
    rq, rv = torch.autograd.grad(ref.sum(), (q, v))
    torch.testing.assert_close(dq, rq, atol=1e-10, rtol=0)
    torch.testing.assert_close(dv, rv, atol=1e-10, rtol=0)


def _req(**kw) -> Request:
    base = dict(batch=1, q_heads=2, kv_heads=2, q_len=16, kv_len=16, head_dim=8, v_dim=8,
                device=torch.device("cpu"), dtype=torch.float32, needs_grad=True,
                mask=masks.causal(), score_mod=None, dropout_p=0.0, return_weights=False)
    return Request(**{**base, **kw})


def test_supports_and_dispatch():
    assert bb.supports(_req()) is None
    assert "dropout" in bb.supports(_req(dropout_p=0.1))
    assert "weights" in bb.supports(_req(return_weights=True))
    q, k, v = _qkv(B=1, Hq=2, Hkv=2, Lq=1024, Lk=1024, D=8, Dv=8, dtype=torch.float32)
    mask = masks.sliding_window(32, 0)
    decision = explain(q, k, v, mask=mask)  # CPU + grad: flex refuses, the pattern is sparse
    assert decision.backend == "blocked", str(decision)
    with pytest.raises(ValueError, match="blocked"):
        attend(q, k, v, mask=mask, backend="blocked", dropout_p=0.1)
    attend(q, k, v, mask=mask, backend="blocked").sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@dataclass(frozen=True, eq=False)
class _TrainableMod(ScoreMod):
    requires_grad: bool = True


def test_refuses_score_mod_with_trainable_parameters():
    q, k, v = _qkv(B=1, Hq=2, Hkv=2, Lq=16, Lk=16, dtype=torch.float32)
    mod = _TrainableMod(lambda s, b, h, qi, kv: s, "trainable")
    with pytest.raises(ValueError, match="gradient"):
        attend(q, k, v, score_mod=mod, backend="blocked")


def test_plan_is_cached_skips_empty_tiles_and_bands_sliding_windows():
    mask = masks.sliding_window(256, 0)
    kw = dict(batch=1, q_heads=8, kv_heads=8, q_len=4096, kv_len=4096, q_block=64,
              kv_block=64, tile_budget=bb.TILE_BUDGET, device=torch.device("cpu"))
    plan = tile_plan(mask, **kw)
    assert tile_plan(mask, **kw) is plan
    assert plan.n_tiles == 64 * 5 - 10  # 5 key blocks per query block, fewer at the start
    assert plan.density < 0.1
    assert all(c.band is not None for c in plan.chunks)  # K/V read as windows, not gathered
    assert not plan.split


def test_bool_tensor_mask_is_reused_until_modified(small_blocks):
    q, k, v = _qkv(grad=False)
    dense = torch.rand(L, L) > 0.5
    assert bb._as_pattern(dense, L, L) is bb._as_pattern(dense, L, L)
    first = _run("blocked", q, k, v, dense)
    dense[:, :40] = ~dense[:, :40]  # in place: the cached pattern must not be reused
    out = _run("blocked", q, k, v, dense)
    assert not torch.equal(first, out)
    torch.testing.assert_close(out, _run("math", q, k, v, dense), atol=1e-12, rtol=0)
