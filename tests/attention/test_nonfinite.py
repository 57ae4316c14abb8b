"""Non-finite inputs (NaN, ±inf in q, k, v): every backend propagates them as PyTorch's
reference SDPA (``SDPBackend.MATH``) does, never into plausible-looking zeros; a fully masked
row stays zeros; ``check_finite=True`` raises naming the tensor and its first bad index."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnkit.attention import MultiHeadAttention, attend, masks
from attnkit.attention.backends.common import dense_mask

B, HQ, HKV, L, D = 1, 4, 2, 70, 16  # L > 64: rows and keys span several tiles / kernel blocks


def _dead_row_mask() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    m = torch.rand(L, L, generator=g) < 0.3
    m[:, 9] = True  # every live row sees the poisoned key 9 ...
    m[5] = False  # ... except row 5, which sees nothing
    return m


MASKS = {
    "none": None,
    "causal": masks.causal(),
    "window": masks.sliding_window(6, 2),
    "dense": _dead_row_mask(),
    "padding": masks.padding([L - 11]),
}
EXACT = ["math", "sdpa", "flex", "blocked", "auto"]

# (tensor, index (b, h, l, d), value): the position a row reads it from is l
POISON = {
    "q-nan": ("q", (0, 1, 33, 2), float("nan")),
    "q-inf": ("q", (0, 3, 64, 0), float("inf")),
    "k-nan": ("k", (0, 0, 9, 5), float("nan")),
    "k-first-nan": ("k", (0, 1, 0, 3), float("nan")),  # causal row 0 reads only key 0
    "k-inf": ("k", (0, 1, 9, 1), float("inf")),
    "k-neg-inf": ("k", (0, 0, 9, 7), float("-inf")),
    "v-nan": ("v", (0, 1, 9, 4), float("nan")),
    "v-inf": ("v", (0, 0, 66, 0), float("inf")),
}


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, L, D, generator=g) for h in (HQ, HKV, HKV)]


def reference(q, k, v, mask):
    """PyTorch's own math kernel, which propagates non-finite values exactly."""
    allowed = dense_mask(mask, B, HQ, L, L, q.device)
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)


def reading_rows(mask, name: str, idx: tuple[int, ...]) -> torch.Tensor:
    """(HQ, L) bool: the output rows that read the poisoned entry (its query row, or the rows
    allowed to attend to its key)."""
    allowed = dense_mask(mask, B, HQ, L, L, torch.device("cpu"))
    allowed = torch.ones(1, 1, L, L, dtype=torch.bool) if allowed is None else allowed
    allowed = allowed.expand(B, HQ, L, L)[0]  # (HQ, L, L)
    _, h, pos, _ = idx
    rows = torch.zeros(HQ, L, dtype=torch.bool)
    if name == "q":
        rows[h, pos] = allowed[h, pos].any()
    else:
        group = slice(h * (HQ // HKV), (h + 1) * (HQ // HKV))
        rows[group] = allowed[group, :, pos]
    return rows


@pytest.mark.parametrize("poison", list(POISON))
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("backend", EXACT)
def test_propagates_like_pytorch_reference(backend, mask_name, poison):
    mask = MASKS[mask_name]
    if mask_name == "padding" and poison == "v-inf":
        pytest.skip("key 66 is padding: no row reads it")
    name, idx, value = POISON[poison]
    q, k, v = inputs()
    t = {"q": q, "k": k, "v": v}[name]
    t[idx] = value
    out = attend(q, k, v, mask=mask, backend=backend)
    ref = reference(q, k, v, mask)
    rows = reading_rows(mask, name, idx)
    assert rows.any()
    got, want = torch.isfinite(out[0][rows]), torch.isfinite(ref[0][rows])
    assert torch.equal(got, want), (
        f"{backend}: rows that read the {poison} are finite where PyTorch's reference is not "
        f"(or the reverse): {(got != want).any(-1).nonzero().flatten().tolist()}")
    if name != "v" and poison != "k-neg-inf":
        assert not want.all()  # the case is a real one: the reference does propagate
    # a row that attends to nothing is zeros, whatever its inputs hold
    dead = ~dense_mask(mask, B, HQ, L, L, q.device).any(-1) if mask_name == "dense" else None
    if dead is not None:
        assert torch.equal(out[dead.expand(B, HQ, L)], torch.zeros(int(dead.sum()) * HQ, D))


@pytest.mark.parametrize("mask_name", ["none", "causal"])
def test_linear_backend_propagates_to_every_row_that_reads(mask_name):
    """Linear attention is another function (``EXACT = False``): a NaN in a key or value
    reaches every row whose prefix sums include it, and a NaN query its own row. (Rows that
    may not read it can be reached too: the chunked causal form multiplies masked entries by
    0, and 0 · NaN is NaN — the documented "may or may not".)"""
    mask = MASKS[mask_name]
    for poison in ("q-nan", "k-nan", "v-nan"):
        name, idx, value = POISON[poison]
        q, k, v = inputs()
        {"q": q, "k": k, "v": v}[name][idx] = value
        out = attend(q, k, v, mask=mask, backend="linear")
        rows = reading_rows(mask, name, idx)
        assert not torch.isfinite(out[0][rows]).all(-1).any(), poison


@pytest.mark.parametrize("shape", [(8, 8, 4), (1, 5, 64), (70, 70, 16)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_nan_query_row_is_not_zeros_on_the_auto_fast_path(dtype, shape):
    """The defect behind the contract: PyTorch's CPU flash kernel turns a key block whose
    scores are all NaN into zeros (short rows, decoding steps); auto (sdpa, is_causal fast
    path) must return NaN there — and only there."""
    lq, lk, d = shape
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, lq, d, generator=g).to(dtype)
    k, v = (torch.randn(1, 2, lk, d, generator=g).to(dtype) for _ in range(2))
    q[0, 2, lq - 1, 1] = float("nan")
    for mask in (None, masks.causal()):
        out = attend(q, k, v, mask=mask)
        assert out[0, 2, lq - 1].isnan().all()
        others = torch.ones(4, lq, dtype=torch.bool)
        others[2, lq - 1] = False
        assert torch.isfinite(out[0][others]).all()


def test_nan_in_the_only_key_of_a_row_is_not_hidden():
    """Causal row 0 reads key 0 only: NaN there must reach row 0 (PyTorch's CPU flash kernel
    returns zeros for it)."""
    q, k, v = (torch.randn(1, 1, 8, 4) for _ in range(3))
    k[0, 0, 0, 2] = float("nan")
    out = attend(q, k, v, mask=masks.causal())
    assert out[0, 0].isnan().all(-1).all()  # every row reads key 0


def test_multihead_attention_fast_path_propagates():
    """MultiHeadAttention's direct SDPA call follows the same contract as attend: a NaN in a
    query projection weight (a head whose training diverged) reaches the output."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, 2).eval()
    with torch.no_grad():
        mha.qkv.weight[9, 0] = float("nan")  # feature 9: query head 1 (head_dim 8)
    x = torch.randn(2, 5, 32)  # short rows: where the CPU flash kernel hides NaN
    with torch.no_grad():
        for mask in (None, masks.causal()):
            y = mha(x, mask=mask)
            y_ref = mha(x, mask=mask, backend="math")
            assert y_ref.isnan().all() and y.isnan().all()


def test_decoding_with_a_cache_propagates_a_nan_key():
    """Decoding one token at a time checks only each step's new keys (the cache remembers a
    bad one): a NaN key written at step 3 reaches every later step (steps 0-2 never see it)."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, 2).eval()
    x = torch.randn(1, 24, 32)
    x[0, 3, 5] = float("nan")  # token 3's q, k and v are NaN
    with torch.no_grad():
        cache = mha.new_cache(1, 24)
        steps = [mha(x[:, i:i + 1], mask=masks.causal(), cache=cache) for i in range(24)]
        clean = mha(x[:, :3], mask=masks.causal())
    got = torch.cat(steps, dim=1)
    assert cache.nonfinite and got[0, 3:].isnan().all()
    torch.testing.assert_close(got[:, :3], clean, atol=1e-5, rtol=1e-5)
    cache.reset()
    assert not cache.nonfinite


def test_gradients_still_flow_through_the_guarded_path():
    q, k, v = (t.requires_grad_() for t in inputs())
    out = attend(q, k, v, mask=masks.causal())
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


# ---- check_finite ------------------------------------------------------------------------


@pytest.mark.parametrize("poison", ["q-nan", "k-inf", "k-neg-inf", "v-nan"])
@pytest.mark.parametrize("backend", ["auto", "math", "blocked", "linear"])
def test_check_finite_names_the_tensor_and_the_first_bad_index(backend, poison):
    name, idx, value = POISON[poison]
    q, k, v = inputs()
    t = {"q": q, "k": k, "v": v}[name]
    t[idx] = value
    later = list(idx)
    later[2] += 1
    t[tuple(later)] = value  # a second bad entry: the first one is named
    shown = "nan" if value != value else ("inf" if value > 0 else "-inf")
    msg = (f"attend(check_finite=True): {name} has 2 non-finite values; the first is {shown} "
           f"at index {tuple(idx)}")
    with pytest.raises(ValueError, match=re.escape(msg)):
        attend(q, k, v, mask=masks.causal(), backend=backend, check_finite=True)


def test_check_finite_passes_clean_inputs_through_unchanged():
    q, k, v = inputs()
    for backend in ("auto", "math", "blocked"):
        assert torch.equal(attend(q, k, v, backend=backend, check_finite=True),
                           attend(q, k, v, backend=backend))


def test_check_finite_must_be_a_bool():
    q, k, v = inputs()
    with pytest.raises(TypeError, match="check_finite must be True or False, got 'yes'"):
        attend(q, k, v, check_finite="yes")
