"""Reformer LSH attention: fast == reference, and the defining properties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnkit.attention import attend
from attnkit.attention.lsh import (
    LSHAttention,
    lsh_attention,
    lsh_attention_reference,
    lsh_buckets,
)


def _full_shared_qk(qk, v, causal=False):
    """Exact shared-QK attention with the Reformer self rule, via the math backend."""
    N = qk.shape[2]
    allowed = ~torch.eye(N, dtype=torch.bool)
    if causal:
        allowed &= torch.ones(N, N, dtype=torch.bool).tril()
        allowed[0, 0] = True  # the first token has no other key
    return attend(qk, F.normalize(qk, dim=-1), v, mask=allowed, backend="math")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("N,chunk,n_buckets,n_hashes", [
    (23, 4, 4, 3), (16, 8, 2, 1), (7, 16, 8, 2), (30, 5, 6, 4), (12, 3, 1, 2),
])
def test_fast_matches_reference(causal, N, chunk, n_buckets, n_hashes):
    qk, v = torch.randn(1, 2, N, 8), torch.randn(1, 2, N, 5)
    kw = dict(n_buckets=n_buckets, n_hashes=n_hashes, chunk_size=chunk, causal=causal, seed=3)
    torch.testing.assert_close(lsh_attention(qk, v, **kw), lsh_attention_reference(qk, v, **kw),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_hashes", [1, 3])
def test_one_bucket_one_chunk_is_full_attention(causal, n_hashes):
    qk, v = torch.randn(2, 3, 19, 8), torch.randn(2, 3, 19, 4)
    out = lsh_attention(qk, v, n_buckets=1, n_hashes=n_hashes, chunk_size=19, causal=causal)
    torch.testing.assert_close(out, _full_shared_qk(qk, v, causal), rtol=1e-5, atol=1e-5)
    # A chunk larger than the sequence (padding) changes nothing.
    out_pad = lsh_attention(qk, v, n_buckets=1, n_hashes=n_hashes, chunk_size=32, causal=causal)
    torch.testing.assert_close(out_pad, out, rtol=1e-5, atol=1e-6)


def test_seeded_hashing_is_deterministic_and_seed_dependent():
    qk, v = torch.randn(1, 2, 64, 16), torch.randn(1, 2, 64, 4)
    b1 = lsh_buckets(qk, 8, 2, seed=7)
    assert b1.shape == (1, 2, 2, 64) and b1.min() >= 0 and b1.max() < 8
    assert torch.equal(b1, lsh_buckets(qk, 8, 2, seed=7))
    assert torch.equal(b1, lsh_buckets(qk, 8, 2, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(b1, lsh_buckets(qk, 8, 2, seed=8))
    assert torch.equal(b1, lsh_buckets(qk * 5.0, 8, 2, seed=7))  # angular: scale invariant
    m = LSHAttention(n_buckets=8, n_hashes=2, chunk_size=16, seed=7)
    assert torch.equal(m(qk, v), m(qk, v))
    assert not torch.equal(m(qk, v), LSHAttention(8, 2, 16, seed=8)(qk, v))


def test_hash_is_argmax_of_rotation():
    """bucket = argmax([xR ; −xR]) per head and round (Reformer §3), ties included."""
    B, H, N, D, R, nb = 2, 3, 50, 4, 2, 10
    qk = torch.randn(B, H, N, D)
    qk[:, :, :5] = 0.0  # all-zero rotations: a tie, argmax takes the first bucket
    rot = torch.randn(H, D, R, nb // 2, generator=torch.Generator().manual_seed(0))
    got = lsh_buckets(qk, nb, R, seed=0)
    assert got.shape == (B, H, R, N)
    for b in range(B):
        for h in range(H):
            for r in range(R):
                xr = qk[b, h] @ rot[h, :, r]
                assert torch.equal(got[b, h, r], torch.cat([xr, -xr], -1).argmax(-1))
    assert (got[:, :, :, :5] == 0).all()


@pytest.mark.parametrize("causal", [False, True])
def test_mass_only_in_bucket_and_adjacent_chunk(causal):
    N, c = 40, 6
    qk, v = torch.randn(1, 2, N, 8), torch.randn(1, 2, N, 3)
    b = lsh_buckets(qk, 4, 1, seed=2)
    out, w = lsh_attention(qk, v, buckets=b, chunk_size=c, causal=causal, return_weights=True)
    torch.testing.assert_close(w @ v, out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, N))
    for h in range(2):
        bk = b[0, h, 0]
        rank = torch.empty(N, dtype=torch.long)
        rank[(bk * N + torch.arange(N)).argsort()] = torch.arange(N)
        chunk = rank // c
        support = w[0, h] > 0
        same_bucket = bk[:, None] == bk[None, :]
        d = chunk[:, None] - chunk[None, :]  # query chunk - key chunk
        near = (d == 0) | (d == 1)  # own chunk or the previous one
        assert not (support & ~(same_bucket & near)).any()
        # Self only when nothing else is available.
        self_w = w[0, h].diagonal() > 0
        others = (support & ~torch.eye(N, dtype=torch.bool)).any(-1)
        assert not (self_w & others).any()


def test_multi_round_support_is_union_of_rounds():
    qk, v = torch.randn(1, 1, 32, 8), torch.randn(1, 1, 32, 3)
    b = lsh_buckets(qk, 4, 3, seed=5)
    _, w = lsh_attention(qk, v, buckets=b, chunk_size=8, return_weights=True)
    share_any = (b[0, 0, :, :, None] == b[0, 0, :, None, :]).any(0)
    assert not ((w[0, 0] > 0) & ~share_any).any()
    # Each round alone covers part of it; the union sees more than any single round.
    singles = [lsh_attention(qk, v, buckets=b[:, :, r:r + 1], chunk_size=8,
                             return_weights=True)[1][0, 0] > 0 for r in range(3)]
    assert (w[0, 0] > 0).sum() >= max(s.sum() for s in singles)


def test_more_hash_rounds_approach_full_attention_on_clusters():
    K, per, D, trials = 8, 8, 16, 6
    errs = {r: 0.0 for r in (1, 2, 4, 8)}
    for t in range(trials):
        g = torch.Generator().manual_seed(100 + t)
        centres = F.normalize(torch.randn(K, D, generator=g), dim=-1)
        x = centres.repeat_interleave(per, 0) + 0.05 * torch.randn(K * per, D, generator=g)
        qk = (x[torch.randperm(K * per, generator=g)] * 24.0)[None, None]
        v = torch.randn(1, 1, K * per, 4, generator=g)
        ref = _full_shared_qk(qk, v)
        for r in errs:
            out = lsh_attention(qk, v, n_buckets=8, n_hashes=r, chunk_size=16, seed=t)
            errs[r] += ((out - ref).norm() / ref.norm()).item() / trials
    e = list(errs.values())
    assert all(b < a for a, b in zip(e, e[1:], strict=False)), errs
    assert e[-1] < 0.5 * e[0], errs


def test_causal_never_looks_ahead():
    N = 33
    qk, v = torch.randn(1, 2, N, 8), torch.randn(1, 2, N, 4)
    kw = dict(n_buckets=4, n_hashes=2, chunk_size=4, causal=True, seed=0)
    out, w = lsh_attention(qk, v, return_weights=True, **kw)
    assert (w.triu(diagonal=1) == 0).all()
    assert ((w[..., 0, :] > 0) == (torch.arange(N) == 0)).all()  # token 0 sees only itself
    b = lsh_buckets(qk, 4, 2, seed=0)
    for t in (0, 5, 17, 31):
        v2 = v.clone()
        v2[:, :, t + 1:] += 10.0
        torch.testing.assert_close(lsh_attention(qk, v2, **kw)[:, :, :t + 1], out[:, :, :t + 1])
        # With the hashing fixed, future queries/keys cannot affect the past either.
        qk2 = qk.clone()
        qk2[:, :, t + 1:] = torch.randn_like(qk2[:, :, t + 1:])
        out2 = lsh_attention(qk2, v2, buckets=b, chunk_size=4, causal=True)
        torch.testing.assert_close(out2[:, :, :t + 1], out[:, :, :t + 1])


def test_gradients_finite_with_padding():
    qk = torch.randn(1, 2, 13, 8, requires_grad=True)
    v = torch.randn(1, 2, 13, 4, requires_grad=True)
    out = lsh_attention(qk, v, n_buckets=4, n_hashes=2, chunk_size=5, causal=True, seed=1)
    out.sum().backward()
    assert torch.isfinite(qk.grad).all() and qk.grad.abs().sum() > 0
    assert torch.isfinite(v.grad).all()


def test_bad_arguments():
    qk, v = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="n_buckets"):
        lsh_attention(qk, v, n_buckets=3)
    with pytest.raises(ValueError, match="n_hashes"):
        LSHAttention(n_hashes=0)
    with pytest.raises(ValueError, match="chunk_size"):
        lsh_attention(qk, v, chunk_size=0)
    with pytest.raises(ValueError, match="agree"):
        lsh_attention(qk, v[:, :, :5])
    with pytest.raises(ValueError, match="buckets must be"):
        lsh_attention(qk, v, buckets=torch.zeros(1, 2, 1, 5, dtype=torch.long))
