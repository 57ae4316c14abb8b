"""``blocked``: exact block-sparse attention in plain PyTorch, computed tile by tile and
skipping the tiles the mask empties, with a hand-written backward that recomputes the
probabilities from the saved log-sum-exp — so sparse and local patterns *train* fast on CPU,
where FlexAttention has no backward.

Tiles, rows, chunks (see :mod:`~attnkit.attention.backends.blocked_layout`)
    Queries are cut into blocks of ``bq`` rows, keys into blocks of ``bk``; a tile is one
    (query block, key block) pair. The plan lists, once per (pattern, shape), the non-empty
    key blocks of every query block ("row"). A row's key blocks are concatenated into one key
    axis of ``M·bk`` columns, so each row is one ``bq × M·bk`` product and the sums over its
    keys happen inside the matmuls. Rows with equal tile counts form a chunk; every step
    below is one batched op over a chunk's rows, so Python loops once per chunk, and a row
    with many tiles (a global token) costs only its own tiles. Banded chunks (sliding windows,
    causal) read their K/V windows as overlapping strided views; others gather them with
    ``index_select``. Only "partial" tiles take an element mask (precomputed, cached).

    GQA / MQA: the ``rep = Hq / Hkv`` query heads of a group share one K/V head, so a row holds
    the ``rep × bq`` query rows of the whole group; K and V are never repeated, and dK/dV sum
    over the group inside the matmuls.

Forward, per query row (scale · log2 e folded into q; exp2 is fast on CPU for −inf and
underflowing inputs, where exp falls off its vector path)
    s_j = score_mod(q · k_j)    (−inf where the pattern disallows; partial tiles only)
    m = max_j s_j,   l = Σ_j 2^{s_j − m},   o = Σ_j 2^{s_j − m} v_j / l,   lse = m + log2 l
    A row split over several chunks (more tiles than the chunk budget) is merged like an
    online softmax: ``lse = log2 Σ_p 2^{lse_p}``, ``o = Σ_p 2^{lse_p − lse} o_p``.
    A row with no allowed key gets o = 0 (set, not computed: 0 · NaN would be NaN) and
    lse = +∞. NaN/inf in q, k, v otherwise propagate through these formulas.

Backward, per chunk (recomputes P from lse: extra memory O(N), never O(N²))
    P  = 2^{S − lse}            (0 on masked entries and on rows with lse = +∞)
    dV = Pᵀ dO,   dP = dO Vᵀ,   dS = P ∘ (dP − rowsum(dO ∘ O))
    dQ = dS K · scale,   dK = dSᵀ Q · scale
    dQ is summed per row inside the matmul; dK/dV per-slot pieces are ``index_add_``-ed
    into their key blocks. A non-additive score_mod is differentiated through with a local
    ``autograd.grad`` per chunk (gradients reach q/k/v, not the modifier's own parameters).

Every float dtype is computed in float32 (float64 stays float64) and cast back. Attention
dropout and returning the weights are refused by ``supports``.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from attnkit.attention.backends.blocked_layout import Chunk, TilePlan, tile_plan
from attnkit.attention.masks import Mask, from_dense
from attnkit.attention.score_mods import ScoreMod

NAME = "blocked"
EXACT = True

# Measured on CPU (2 threads, fp32, D=64, sliding window): 64×64 tiles with ~2M scores per
# chunk beat 32, 128 and budgets of 1M/4M — chunks stay cache-sized, windows stay tight.
Q_BLOCK = 64  # query rows per block (times Hq/Hkv in a GQA group)
KV_BLOCK = 64  # keys per block
TILE_BUDGET = 1 << 21  # scores per chunk, over batch × query heads (8 MiB of float32)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INF = float("inf")
_LOG2E = 1.0 / math.log(2.0)


def tile_sizes(q_len: int, kv_len: int) -> tuple[int, int]:
    """``(query block, key block)`` this backend cuts a ``q_len × kv_len`` problem into."""
    return _block_size(q_len, Q_BLOCK), _block_size(kv_len, KV_BLOCK)


def supports(req) -> str | None:
    if req.return_weights:
        return "does not return attention weights (use math)"
    if req.dropout_p > 0:
        return "no attention dropout (use math or sdpa)"
    if req.dtype not in _DTYPES:
        return f"dtype {req.dtype} is not supported (float16, bfloat16, float32, float64)"
    if req.needs_grad and getattr(req.score_mod, "requires_grad", False):
        return f"no gradient for the parameters of score_mod {req.score_mod.name} (use math)"
    return None


def forward(q: Tensor, k: Tensor, v: Tensor, *, mask, score_mod: ScoreMod | None, scale: float,
            dropout_p: float, return_weights: bool) -> tuple[Tensor, None]:
    if dropout_p > 0 or return_weights:
        raise ValueError("blocked backend: no dropout and no attention weights (use math)")
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    bq, bk = tile_sizes(Lq, Lk)
    plan = tile_plan(_as_pattern(mask, Lq, Lk), batch=B, q_heads=Hq, kv_heads=Hkv, q_len=Lq,
                     kv_len=Lk, q_block=bq, kv_block=bk, tile_budget=TILE_BUDGET,
                     device=q.device)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out = _BlockedAttention.apply(q, k, v, plan, score_mod, scale)
    else:
        out = _attend(q, k, v, plan, score_mod, scale)[0]
    return out, None


class _BlockedAttention(torch.autograd.Function):
    """Forward saves q, k, v, out and the per-row log-sum-exp; backward recomputes P."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, plan: TilePlan,
                score_mod: ScoreMod | None, scale: float) -> Tensor:
        out, lse = _attend(q, k, v, plan, score_mod, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.score_mod, ctx.scale = plan, score_mod, scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _attend_backward(d_out, q, k, v, out, lse, ctx.plan, ctx.score_mod,
                                      ctx.scale, ctx.needs_input_grad[:3])
        return dq, dk, dv, None, None, None


# ---- the two passes ----------------------------------------------------------------------


def _attend(q: Tensor, k: Tensor, v: Tensor, plan: TilePlan, score_mod: ScoreMod | None,
            scale: float) -> tuple[Tensor, Tensor]:
    """Output ``(B, Hq, Lq, Dv)`` in q's dtype, and the blocked base-2 lse
    ``(B, Hkv, nQ, rep·bq)`` (+inf on rows with no allowed key: backward's P is 0 there)."""
    B, Hq, Lq, _ = q.shape
    Hkv, Dv = k.shape[1], v.shape[-1]
    Qb, Kb, Vb, _ = _blocked_inputs(q, k, v, plan, scale, score_mod)
    rq = Qb.shape[3]
    nV = plan.virtual_rows.numel()
    out_v = Qb.new_empty((B, Hkv, nV, rq, Dv))  # per virtual row, normalised
    lse_v = Qb.new_empty((B, Hkv, nV, rq))
    for c in plan.chunks:
        Kc, Vc = _window(Kb, c), _window(Vb, c)  # (B, Hkv, R, M·bk, D|Dv)
        S = _scores(_rows(Qb, c), Kc, c, score_mod, Hq)  # (B, Hkv, R, rq, M·bk), base 2
        m = S.amax(dim=-1, keepdim=True)
        m = m.masked_fill_(m == -_INF, 0.0)  # a row with nothing allowed: any finite shift
        P = S.sub_(m).exp2_()
        l = P.sum(dim=-1, keepdim=True)  # (B, Hkv, R, rq, 1)
        empty = l == 0  # nothing allowed: o = 0 exactly, even if a value it skips is NaN
        o = _bmm(P, Vc, c).div_(l.masked_fill(empty, 1.0)).masked_fill_(empty, 0.0)
        rows = slice(c.v_start, c.v_start + c.n_rows)
        out_v[:, :, rows] = o
        lse_v[:, :, rows] = (m + l.log2()).squeeze(-1)  # -inf where nothing is allowed
    out, lse = _merge_rows(out_v, lse_v, plan)
    return _from_blocks(out, Hq, Lq).to(q.dtype), lse


def _merge_rows(out_v: Tensor, lse_v: Tensor, plan: TilePlan) -> tuple[Tensor, Tensor]:
    """Virtual rows -> query blocks: ``lse = log2 Σ 2^{lse_v}``, ``out = Σ 2^{lse_v - lse} out_v``
    (a permutation when no row is split). Returns out ``(B, Hkv, nQ, rq, Dv)`` and lse."""
    B, Hkv, _, rq, Dv = out_v.shape
    idx = plan.virtual_rows
    if not plan.split:
        out = out_v.new_zeros((B, Hkv, plan.n_q, rq, Dv)).index_copy_(2, idx, out_v)
        lse = lse_v.new_full((B, Hkv, plan.n_q, rq), -_INF).index_copy_(2, idx, lse_v)
    else:
        top = lse_v.new_full((B, Hkv, plan.n_q, rq), -_INF)
        top.scatter_reduce_(2, idx.view(1, 1, -1, 1).expand_as(lse_v), lse_v, "amax")
        top = top.masked_fill_(top == -_INF, 0.0)
        w = torch.exp2(lse_v - top.index_select(2, idx))  # (B, Hkv, nV, rq)
        total = torch.zeros_like(top).index_add_(2, idx, w)
        lse = top + total.log2()
        w = w / total.masked_fill(total == 0, 1.0).index_select(2, idx)
        out = out_v.new_zeros((B, Hkv, plan.n_q, rq, Dv))
        out.index_add_(2, idx, out_v * w.unsqueeze(-1))
    return out, lse.masked_fill_(lse == -_INF, _INF)


def _attend_backward(d_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                     plan: TilePlan, score_mod: ScoreMod | None, scale: float,
                     needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """Gradients w.r.t. q, k, v (None where not needed)."""
    Hq, Lq = q.shape[1], q.shape[2]
    Hkv, Lk = k.shape[1], k.shape[2]
    bk = plan.kv_block
    Qb, Kb, Vb, k_scale = _blocked_inputs(q, k, v, plan, scale, score_mod)
    d_out = d_out.to(Qb.dtype)
    dOb = _to_blocks(d_out, Hkv, plan.q_block, plan.n_q)  # (B, Hkv, nQ, rq, Dv)
    delta = (d_out * out.to(Qb.dtype)).sum(dim=-1, keepdim=True)  # (B, Hq, Lq, 1)
    Db = _to_blocks(delta, Hkv, plan.q_block, plan.n_q)  # (B, Hkv, nQ, rq, 1): rowsum(dO∘O)
    need_q, need_k, need_v = needs
    dQb = torch.zeros_like(Qb) if need_q else None
    dKb = torch.zeros_like(Kb) if need_k else None
    dVb = torch.zeros_like(Vb) if need_v else None
    nonadditive = score_mod is not None and not score_mod.additive
    for c in plan.chunks:
        Qr = _rows(Qb, c)  # (B, Hkv, R, rq, D)
        Kc, Vc = _window(Kb, c), _window(Vb, c)  # (B, Hkv, R, M·bk, D|Dv)
        if nonadditive:
            with torch.enable_grad():
                raw = _bmm(Qr, Kc.transpose(-1, -2), c).requires_grad_()
                modded = _apply_score_mod(score_mod, raw, c, Hq)
            S = _scores(None, None, c, None, Hq, scores=modded.detach() * _LOG2E)
        else:
            S = _scores(Qr, Kc, c, score_mod, Hq)
        P = S.sub_(_rows(lse, c).unsqueeze(-1)).exp2_()  # (B, Hkv, R, rq, M·bk)
        dOr = _rows(dOb, c)  # (B, Hkv, R, rq, Dv)
        if need_v:
            _add_windows(dVb, c, _bmm(P.transpose(-1, -2), dOr, c), bk)
        if not (need_q or need_k):
            continue
        dP = _bmm(dOr, Vc.transpose(-1, -2), c)
        dS = dP.sub_(_rows(Db, c)).mul_(P)  # P ∘ (dP − rowsum(dO∘O)), natural-log units
        if nonadditive:
            dS = torch.autograd.grad(modded, raw, dS)[0]
        if need_q:
            _add_rows(dQb, c, _bmm(dS, Kc, c))
        if need_k:
            _add_windows(dKb, c, _bmm(dS.transpose(-1, -2), Qr, c), bk)
    dq = (_from_blocks(dQb, Hq, Lq) * scale).to(q.dtype) if need_q else None
    dk = (_from_blocks(dKb, Hkv, Lk) * k_scale).to(k.dtype) if need_k else None
    dv = _from_blocks(dVb, Hkv, Lk).to(v.dtype) if need_v else None
    return dq, dk, dv


def _blocked_inputs(q: Tensor, k: Tensor, v: Tensor, plan: TilePlan, scale: float,
                    score_mod: ScoreMod | None) -> tuple[Tensor, Tensor, Tensor, float]:
    """Blocked, scaled compute-dtype copies of q, k, v, and the factor that turns
    ``dSᵀ Qb`` into dK. Without a score_mod, log2(e) is folded into q so that the scores
    come out in base-2 units (``exp2`` is fast for every input; ``exp`` is not, for −inf
    and underflow); with one, the scores are rescaled after the modifier."""
    Hkv = k.shape[1]
    cd = torch.float64 if q.dtype == torch.float64 else torch.float32
    q_scale = scale if score_mod is not None else scale * _LOG2E
    Qb = _to_blocks(q.to(cd) * q_scale, Hkv, plan.q_block, plan.n_q)  # (B, Hkv, nQ, rq, D)
    Kb = _to_blocks(k.to(cd), Hkv, plan.kv_block, plan.n_kv)  # (B, Hkv, nK, bk, D)
    Vb = _to_blocks(v.to(cd), Hkv, plan.kv_block, plan.n_kv)  # (B, Hkv, nK, bk, Dv)
    return Qb, Kb, Vb, scale / q_scale


# ---- a chunk's operands ------------------------------------------------------------------
# A banded chunk reads its rows and key windows as strided views of the blocked tensors
# (row r = block r0 + r·dr, window = key blocks s0 + r·ds + [0, M)); the views' batch dims
# cannot be flattened, so its matmuls loop over (batch, kv head). Other chunks gather.


def _rows(x: Tensor, c: Chunk) -> Tensor:
    """``x (B, Hkv, nQ, ...)`` at the chunk's rows: ``(B, Hkv, R, ...)``."""
    if c.band is None:
        return x.index_select(2, c.rows)
    r0, dr = int(c.rows[0]), c.band[0]
    return x[:, :, r0:r0 + (c.n_rows - 1) * dr + 1:dr]


def _add_rows(dst: Tensor, c: Chunk, src: Tensor) -> None:
    """``dst[:, :, rows] += src`` (rows may repeat in a gathered chunk)."""
    if c.band is None:
        dst.index_add_(2, c.rows, src)
    else:
        _rows(dst, c).add_(src)


def _window(x: Tensor, c: Chunk) -> Tensor:
    """``x (B, Hkv, nK, bk, D)`` at the chunk's slots: ``(B, Hkv, R, M·bk, D)``."""
    B, H, _, bk, D = x.shape
    if c.band is None:
        return x.index_select(2, c.kv_blocks).view(B, H, c.n_rows, c.n_slots * bk, D)
    _, s0, ds = c.band
    sb, sh, sk = x.stride()[:3]
    return x.as_strided((B, H, c.n_rows, c.n_slots * bk, D), (sb, sh, ds * sk, D, 1),
                        x.storage_offset() + s0 * sk)


def _add_windows(dst: Tensor, c: Chunk, src: Tensor, bk: int) -> None:
    """Scatter-add per-slot pieces ``src (B, Hkv, R, M·bk, D)`` into ``dst (B, Hkv, nK, bk, D)``."""
    B, H, _, _, D = src.shape
    dst.index_add_(2, c.kv_blocks, src.reshape(B, H, -1, bk, D))


def _bmm(a: Tensor, b: Tensor, c: Chunk) -> Tensor:
    """``a @ b`` over the leading (B, Hkv, R) dims."""
    if c.band is None:
        return torch.matmul(a, b)
    B, H = a.shape[:2]
    out = a.new_empty((B, H, a.shape[2], a.shape[3], b.shape[4]))
    for i in range(B):
        for j in range(H):
            torch.matmul(a[i, j], b[i, j], out=out[i, j])
    return out


def _scores(Qr: Tensor | None, Kc: Tensor | None, c: Chunk, score_mod: ScoreMod | None,
            q_heads: int, scores: Tensor | None = None) -> Tensor:
    """A chunk's scores in base-2 units ``(B, Hkv, R, rq, M·bk)``: ``Qr Kcᵀ`` (unless given),
    the score_mod (then ·log2 e), and −inf on the disallowed entries of the masked slots."""
    if scores is None:
        scores = _bmm(Qr, Kc.transpose(-1, -2), c)
        if score_mod is not None:
            scores = _apply_score_mod(score_mod, scores, c, q_heads).mul_(_LOG2E)
    if c.mask_runs:
        B, Hkv, R, rq, W = scores.shape
        rep = q_heads // Hkv
        view = scores.view(B, Hkv, R, rep, rq // rep, W)
        bk = W // c.n_slots
        for a, b, masked_out in c.mask_runs:
            view[..., a * bk:b * bk].masked_fill_(masked_out, -_INF)
    return scores


def _apply_score_mod(score_mod: ScoreMod, scores: Tensor, c: Chunk, q_heads: int) -> Tensor:
    """``score_mod`` on a chunk's scores, with broadcast index tensors — 6-D: (batch,
    kv head, row, head in group, query, key); the modifier must be elementwise."""
    B, Hkv, R, rq, W = scores.shape
    rep = q_heads // Hkv
    bq = rq // rep
    dev = scores.device
    b = torch.arange(B, device=dev).view(B, 1, 1, 1, 1, 1)
    h = torch.arange(q_heads, device=dev).view(1, Hkv, 1, rep, 1, 1)
    qi = c.q_pos.view(1, 1, R, 1, bq, 1)
    kv = c.kv_pos.view(1, 1, R, 1, 1, W)
    out = score_mod.fn(scores.view(B, Hkv, R, rep, bq, W), b, h, qi, kv)
    return out.expand(B, Hkv, R, rep, bq, W).reshape(scores.shape)


# ---- layout helpers ----------------------------------------------------------------------


def _as_pattern(mask, q_len: int, kv_len: int) -> Mask | None:
    """A Mask (or None = all allowed) for any accepted mask argument. A bool tensor is wrapped
    once per (tensor, version, shape), so reusing one tensor reuses its cached tile plan."""
    if mask is None or isinstance(mask, Mask):
        return mask
    key = (id(mask), mask._version, tuple(mask.shape), q_len, kv_len)
    hit = _DENSE_PATTERNS.get(key)
    if hit is not None and hit[0]() is mask:
        _DENSE_PATTERNS.move_to_end(key)
        return hit[1]
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # bool, broadcastable
    pattern = from_dense(m.expand(m.shape[0], m.shape[1], q_len, kv_len))
    _DENSE_PATTERNS[key] = (weakref.ref(mask), pattern)
    while len(_DENSE_PATTERNS) > _DENSE_PATTERNS_MAX:
        _DENSE_PATTERNS.popitem(last=False)
    return pattern


_DENSE_PATTERNS: OrderedDict[tuple, tuple[weakref.ref, Mask]] = OrderedDict()  # LRU
_DENSE_PATTERNS_MAX = 4  # each entry keeps its mask tensor alive


def _block_size(length: int, default: int) -> int:
    """``default``, or the length rounded up to 16 when that is shorter (less padding)."""
    return min(default, -(-max(length, 1) // 16) * 16)


def _to_blocks(x: Tensor, groups: int, block: int, n_blocks: int) -> Tensor:
    """``(B, H, L, D) -> (B, groups, n_blocks, rep·block, D)``, zero-padded to whole blocks;
    the ``rep = H / groups`` heads of a group share a row (row ``r·block + t`` = head
    ``g·rep + r``, position ``i·block + t``)."""
    B, H, L, D = x.shape
    rep = H // groups
    if n_blocks * block != L:
        x = F.pad(x, (0, 0, 0, n_blocks * block - L))
    x = x.reshape(B, groups, rep, n_blocks, block, D)
    if rep > 1:
        x = x.transpose(2, 3)
    return x.reshape(B, groups, n_blocks, rep * block, D).contiguous()


def _from_blocks(xb: Tensor, heads: int, length: int) -> Tensor:
    """Inverse of :func:`_to_blocks`: ``(B, G, nB, rep·block, D) -> (B, heads, length, D)``."""
    B, G, n_blocks, rows, D = xb.shape
    rep = heads // G
    block = rows // rep
    x = xb.view(B, G, n_blocks, rep, block, D)
    if rep > 1:
        x = x.transpose(2, 3)
    return x.reshape(B, heads, n_blocks * block, D)[:, :, :length].contiguous()
