"""``explain`` / ``backend="auto"``: which backend is picked, and the explanation it gives."""

from __future__ import annotations

import pytest
import torch

from attnkit.attention import Decision, attend, backends, explain, masks, score_mods
from attnkit.attention.core import SPARSE_DENSITY, _request


def qkv(b=1, hq=4, hkv=2, lq=32, lk=32, d=16, grad=False):
    ts = (torch.randn(b, hq, lq, d), torch.randn(b, hkv, lk, d), torch.randn(b, hkv, lk, d))
    return tuple(t.requires_grad_(grad) for t in ts)


def available(name, q, k, v, **kw):
    return not backends.get(name).supports(
        _request(q, k, v, kw.get("mask"), kw.get("score_mod"), kw.get("dropout_p", 0.0),
                 kw.get("return_weights", False)))


def _check_matches_attend(q, k, v, d: Decision, **kw):
    """attend(auto) runs exactly the backend explain() names."""
    auto = attend(q, k, v, **kw)
    named = attend(q, k, v, backend=d.backend, **kw)
    if kw.get("return_weights"):
        auto, named = auto[0], named[0]
    torch.testing.assert_close(auto, named, atol=0, rtol=0)


@pytest.mark.parametrize("mask", [None, masks.causal(), masks.full()],
                         ids=["none", "causal", "full"])
@pytest.mark.parametrize("grad", [False, True])
def test_dense_and_causal_pick_sdpa(mask, grad):
    q, k, v = qkv(grad=grad)
    d = explain(q, k, v, mask=mask)
    assert d.backend == "sdpa"
    assert d.reasons["sdpa"] == "ok" and d.reasons["math"] == "ok"
    _check_matches_attend(q, k, v, d, mask=mask)


def test_decode_causal_picks_sdpa():
    q, k, v = qkv(lq=1, lk=40)
    assert explain(q, k, v, mask=masks.causal()).backend == "sdpa"


def test_tensor_mask_and_additive_mod_pick_sdpa():
    q, k, v = qkv()
    m = torch.rand(32, 32) > 0.5
    assert explain(q, k, v, mask=m).backend == "sdpa"
    assert explain(q, k, v, score_mod=score_mods.alibi(4)).backend == "sdpa"
    d = explain(q, k, v, mask=masks.causal(), score_mod=score_mods.alibi(4))
    assert d.backend == "sdpa"
    _check_matches_attend(q, k, v, d, mask=masks.causal(), score_mod=score_mods.alibi(4))


@pytest.mark.parametrize("mask", [None, masks.causal(), masks.sliding_window(4)],
                         ids=["none", "causal", "window"])
def test_return_weights_picks_math(mask):
    q, k, v = qkv()
    d = explain(q, k, v, mask=mask, return_weights=True)
    assert d.backend == "math"
    assert "weights" in d.why
    assert "weights" in d.reasons["sdpa"]
    out, w = attend(q, k, v, mask=mask, return_weights=True)
    assert w.shape == (1, 4, 32, 32)


def test_dropout_is_never_sent_to_a_backend_without_it():
    q, k, v = qkv(lq=256, lk=256)
    m = masks.sliding_window(8)
    d = explain(q, k, v, mask=m, dropout_p=0.1)
    assert d.reasons[d.backend] == "ok"
    assert "dropout" in d.reasons["flex"]
    assert d.backend in ("sdpa", "math")


def test_non_additive_mod_avoids_sdpa():
    q, k, v = qkv()
    mod = score_mods.softcap(5.0)
    d = explain(q, k, v, mask=masks.causal(), score_mod=mod)
    assert d.backend != "sdpa" and "not additive" in d.reasons["sdpa"]
    assert d.reasons[d.backend] == "ok"
    # under grad on CPU flex cannot serve either: a tiled backend that can (blocked) or math
    qg, kg, vg = qkv(grad=True)
    dg = explain(qg, kg, vg, mask=masks.causal(), score_mod=mod)
    assert dg.backend != "flex" and dg.reasons[dg.backend] == "ok"
    if available("blocked", qg, kg, vg, mask=masks.causal(), score_mod=mod):
        assert dg.backend == "blocked"
    else:
        assert dg.backend == "math"
    _check_matches_attend(q, k, v, d, mask=masks.causal(), score_mod=mod)


def test_dense_pattern_at_high_density_picks_sdpa():
    """A pattern that keeps most tiles is cheaper as one dense fused call."""
    q, k, v = qkv(hq=2, hkv=1, lq=512, lk=512, d=8)
    m = masks.sliding_window(400, 400)
    d = explain(q, k, v, mask=m)
    assert d.backend == "sdpa"
    assert "dense fused kernel" in d.why
    lay = m.block_layout(512, 512)
    assert lay.density > SPARSE_DENSITY


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_sparse_window_at_2048_picks_block_sparse(grad):
    N = 2048
    q, k, v = qkv(b=1, hq=2, hkv=1, lq=N, lk=N, d=8, grad=grad)
    m = masks.sliding_window(64)
    why = backends.get("blocked").supports(_request(q, k, v, m, None, 0.0, False))
    if why:
        pytest.skip(f"blocked backend: {why}")
    d = explain(q, k, v, mask=m)
    assert m.block_layout(N, N).density <= SPARSE_DENSITY
    # on CPU FlexAttention is eager (and has no backward): the block-sparse pick is blocked
    assert d.backend == "blocked", str(d)
    assert "block-sparse" in d.why


def test_sparse_pattern_without_blocked_still_valid():
    """Whatever is available, auto only ever picks a backend whose reason is "ok"."""
    q, k, v = qkv(b=1, hq=2, hkv=1, lq=512, lk=512, d=8)
    for m in (masks.sliding_window(16), masks.strided(32), masks.bigbird(64, num_blocks=8)):
        d = explain(q, k, v, mask=m)
        assert d.reasons[d.backend] == "ok"
        assert d.backend in backends.EXACT


def test_str_lists_every_exact_backend_with_a_reason():
    q, k, v = qkv(grad=True)
    d = explain(q, k, v, mask=masks.sliding_window(4), return_weights=True)
    s = str(d)
    lines = s.splitlines()
    assert lines[0].startswith(f"backend: {d.backend}") and d.why in lines[0]
    assert set(d.reasons) == set(backends.EXACT)
    for name in backends.EXACT:
        row = [ln for ln in lines[1:] if ln.split()[0] == name]
        assert len(row) == 1, f"{name} missing from:\n{s}"
        reason = row[0].split(None, 1)[1]
        assert reason == d.reasons[name] and reason.strip()
        # the reason is the backend's own verdict
        why = backends.get(name).supports(_request(q, k, v, masks.sliding_window(4), None, 0.0,
                                                   True))
        assert reason == (why or "ok")
    assert "linear" not in d.reasons  # approximate backends are never auto-picked


def test_explain_does_not_run_attention():
    q, k, v = qkv()
    d = explain(q, k, v)
    assert isinstance(d, Decision) and q.grad is None


def test_density_probe_uses_the_tile_size_of_the_backend_that_runs():
    """On CPU the probe measures 64×64 tiles, the blocked backend's, so attend() reuses the
    probe's cached layout instead of building a second one at another tile size."""
    from attnkit.attention.backends import blocked_backend

    N = 1024
    q, k, v = qkv(b=1, hq=2, hkv=1, lq=N, lk=N, d=8)
    m = masks.sliding_window(32)
    d = explain(q, k, v, mask=m)
    assert d.backend == "blocked"
    attend(q, k, v, mask=m)
    layouts = {key[3:5] for key in m._cache if key[0] == "layout"}
    assert layouts == {blocked_backend.tile_sizes(N, N)} == {(64, 64)}
    dens = m.block_layout(N, N, q_block=64, kv_block=64, heads=2).density
    assert f"{dens:.1%}" in d.why
