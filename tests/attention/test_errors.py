"""Every validation error of ``attend`` / ``explain``: the exception type and a message that says
what is wrong and how to fix it."""

from __future__ import annotations

import re

import pytest
import torch

from attnkit.attention import attend, backends, explain, masks, score_mods


def t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


Q, K, V = t(2, 4, 5, 8), t(2, 2, 7, 8), t(2, 2, 7, 8)


@pytest.fixture(params=["attend", "explain"])
def entry(request):
    """Both public entry points validate their inputs the same way."""
    return attend if request.param == "attend" else explain


# ---- tensors -------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("shape", [(4, 5, 8), (2, 1, 4, 5, 8), (8,)], ids=str)
def test_wrong_rank(entry, which, shape):
    args = {"q": Q, "k": K, "v": V}
    args[which] = t(*shape)
    with pytest.raises(ValueError, match=rf"{which} must be 4-D .*{re.escape(str(shape))}"):
        entry(args["q"], args["k"], args["v"])


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_not_a_tensor(entry, which):
    args = {"q": Q, "k": K, "v": V}
    args[which] = args[which].tolist()
    with pytest.raises(TypeError, match=rf"{which} must be a torch.Tensor, got list"):
        entry(args["q"], args["k"], args["v"])


@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool], ids=str)
def test_integer_dtype(entry, which, dtype):
    args = {"q": Q, "k": K, "v": V}
    args[which] = args[which].to(dtype)
    with pytest.raises(TypeError, match=rf"{which} must be a floating-point tensor.*{dtype}"):
        entry(args["q"], args["k"], args["v"])


def test_mixed_dtypes(entry):
    with pytest.raises(TypeError, match="dtypes differ"):
        entry(Q, K.double(), V)


def test_mixed_devices(entry):
    with pytest.raises(ValueError, match="devices differ"):
        entry(Q, K.to("meta"), V.to("meta"))


@pytest.mark.parametrize("hq,hkv,valid", [(8, 3, [1, 2, 4, 8]), (6, 4, [1, 2, 3, 6]),
                                          (4, 8, [1, 2, 4]), (5, 2, [1, 5])])
def test_heads_not_dividing(entry, hq, hkv, valid):
    q, k = t(1, hq, 3, 8), t(1, hkv, 3, 8)
    with pytest.raises(ValueError, match=re.escape(f"valid Hkv values: {valid}")) as e:
        entry(q, k, k)
    assert f"({hq})" in str(e.value) and f"({hkv})" in str(e.value)


def test_zero_kv_heads(entry):
    q, k = t(1, 4, 3, 8), t(1, 0, 3, 8)
    with pytest.raises(ValueError, match="valid Hkv"):
        entry(q, k, k)


def test_head_dim_mismatch(entry):
    with pytest.raises(ValueError, match="head_dim mismatch: q has D=8, k has D=6"):
        entry(Q, t(2, 2, 7, 6), t(2, 2, 7, 6))


def test_value_dim_may_differ():
    out = attend(Q, K, t(2, 2, 7, 3))
    assert out.shape == (2, 4, 5, 3)


def test_batch_mismatch(entry):
    with pytest.raises(ValueError, match=r"batch mismatch: q has 2, k/v have 3"):
        entry(Q, t(3, 2, 7, 8), t(3, 2, 7, 8))


@pytest.mark.parametrize("v_shape", [(2, 2, 6, 8), (2, 1, 7, 8), (1, 2, 7, 8)], ids=str)
def test_k_v_mismatch(entry, v_shape):
    with pytest.raises(ValueError, match=r"k and v must agree in \(batch, heads, length\)"):
        entry(Q, K, t(*v_shape))


# ---- masks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 6), (3, 4, 5, 7), (2, 4, 5, 7, 1), (2, 4, 5, 7, 7),
                                   (7, 5), (1, 1, 1, 1, 7)], ids=str)
def test_mask_not_broadcastable(entry, shape):
    m = torch.ones(shape, dtype=torch.bool)
    with pytest.raises(ValueError, match=re.escape(str(shape))) as e:
        entry(Q, K, V, mask=m)
    assert "(2, 4, 5, 7)" in str(e.value)  # the shape it should broadcast to


def test_mask_batch_larger_than_inputs_rejected(entry):
    """A mask that would *enlarge* the batch (3 masks, batch 1) is not broadcastable."""
    q, k = t(1, 4, 5, 8), t(1, 2, 7, 8)
    with pytest.raises(ValueError, match=re.escape("(3, 1, 5, 7)")):
        entry(q, k, k, mask=torch.ones(3, 1, 5, 7, dtype=torch.bool))


@pytest.mark.parametrize("shape", [(7,), (5, 7), (1, 5, 7), (2, 1, 1, 7), (2, 4, 5, 7)],
                         ids=str)
def test_broadcastable_masks_accepted(shape):
    attend(Q, K, V, mask=torch.ones(shape, dtype=torch.bool), backend="math")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64], ids=str)
def test_non_bool_tensor_mask(entry, dtype):
    m = torch.zeros(5, 7, dtype=dtype)
    with pytest.raises(TypeError, match="bias_from_tensor") as e:
        entry(Q, K, V, mask=m)
    assert str(dtype) in str(e.value)


@pytest.mark.parametrize("bad", [[[True] * 7] * 5, "causal", 1.0], ids=["list", "str", "float"])
def test_mask_wrong_type(entry, bad):
    with pytest.raises(TypeError, match="mask must be an attnkit Mask"):
        entry(Q, K, V, mask=bad)


def test_mask_built_for_other_batch(entry):
    for m in (masks.padding([3, 4, 5]), masks.document(torch.zeros(3, 7, dtype=torch.long)),
              masks.causal() & masks.padding([1, 2, 3])):
        with pytest.raises(ValueError, match="built for batch 3, inputs have batch 2"):
            entry(Q, K, V, mask=m)


def test_score_mod_wrong_type(entry):
    with pytest.raises(TypeError, match="score_mod must be an attnkit ScoreMod.*function"):
        entry(Q, K, V, score_mod=lambda s, b, h, q, kv: s)


# ---- scalars -------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_dropout(entry, p):
    with pytest.raises(ValueError, match=rf"dropout_p must be in \[0, 1\), got {p}"):
        entry(Q, K, V, dropout_p=p)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), "0.1", [0.1]], ids=str)
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale must be a finite number"):
        attend(Q, K, V, scale=scale)


# ---- backends ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cuda", "Math", "flash", ""])
def test_unknown_backend(name):
    with pytest.raises(ValueError, match=f"unknown backend {name!r}") as e:
        attend(Q, K, V, backend=name)
    for valid in ("auto", *backends.NAMES):
        assert repr(valid) in str(e.value)
    with pytest.raises(ValueError, match="valid: math, sdpa"):
        backends.get(name)


CANNOT = [
    ("sdpa", dict(return_weights=True), "attention weights"),
    ("sdpa", dict(score_mod=score_mods.softcap(3.0)), "not additive"),
    ("flex", dict(return_weights=True), "attention weights"),
    ("flex", dict(dropout_p=0.1), "dropout"),
    ("flex", dict(grad=True), "backward on CPU"),
    ("blocked", dict(return_weights=True), ""),
    ("blocked", dict(dropout_p=0.1), ""),
]


@pytest.mark.parametrize("name,kw,reason", CANNOT,
                         ids=[f"{n}-{'-'.join(k)}" for n, k, _ in CANNOT])
def test_backend_cannot_serve(name, kw, reason):
    kw = dict(kw)
    q = Q.clone().requires_grad_(kw.pop("grad", False))
    with pytest.raises(ValueError, match=rf"backend '{name}' cannot serve this call: .*{reason}"):
        attend(q, K, V, backend=name, **kw)


def test_backend_reason_matches_supports():
    """The ValueError carries exactly the backend's own supports() reason."""
    from attnkit.attention.core import _request

    req = _request(Q, K, V, None, None, 0.0, True)
    for name in backends.NAMES:
        why = backends.get(name).supports(req)
        if not why:
            continue
        with pytest.raises(ValueError) as e:
            attend(Q, K, V, backend=name, return_weights=True)
        assert str(e.value) == f"backend {name!r} cannot serve this call: {why}"


def test_validation_happens_before_dispatch():
    """Even an explicit backend gets the friendly validation message, not a kernel error."""
    for name in ("math", "sdpa", "flex"):
        with pytest.raises(ValueError, match="head_dim mismatch"):
            attend(Q, t(2, 2, 7, 6), t(2, 2, 7, 6), backend=name)
