"""Static-shape incremental decoding for :class:`~attnkit.models.CausalLM`: every step has
the same tensor shapes, so ``torch.compile`` traces one graph for the whole generation.

    prefill   the model's own forward over the (left-padded) prompt fills one KVCache of
              ``max_len`` slots per layer (the reference path, unchanged)
    step      tokens (B,) -> logits (B, V), a fixed-shape function of
                  slot        0-d long tensor: the cache slot the new token is written to
                  positions   (B,) long: each row's absolute position (cumsum of its mask)
                  valid       (B, max_len) bool: slots holding a real token of that row
              per layer: norm, fused QKV, RoPE at ``positions``, K/V written in place at
              ``slot`` (``index_copy_``), SDPA over all ``max_len`` slots with the key mask
              ``valid & causal/window``, W_O, residual, FFN, residual; final norm, LM head.

A compiled step attends over all ``max_len`` slots (the mask hides the empty ones): O(max_len)
per layer and step, small next to reading the weights (O(d²) per layer), and what keeps the
shapes fixed — no growing views, no ``torch.cat`` of the mask, no Python ints that change per
step (which ``torch.compile`` would specialise on). An eager step reads only the filled
slots (a view of the same buffers).

Packed weights (CPU, fp32, ``batch >= PACK_MIN_ROWS``, eager): every Linear of the step runs
through MKL's packed GEMM (``torch.ops.mkl._mkl_linear`` on weights reordered once per
decoder by ``_mkl_reorder_linear_weight``). ``F.linear`` re-packs its weight operand on every
call when the batch has several rows, which at decoding's few rows costs more than the
product: over all GPT-2-small weights per step (1 thread, streamed from DRAM) the packed
GEMM is 1.6x faster at 4 rows and 1.8x at 8, the same at 1 and 2 (where MKL's GEMV reads the
weights once either way). The packed copy lives as long as the decoder (one generation).

The step restates :class:`~attnkit.layers.TransformerBlock`'s forward for one token, so it
serves the configurations it was written for (:func:`supports`: learned / sinusoidal / RoPE /
no positions, pre- or post-norm, any exact attention backend, GQA, sliding windows) and
:func:`attnkit.generate.generate` falls back to the model's own forward otherwise. Tests
compare it with that forward and with full recomputation token for token.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkit.attention.multihead import MultiHeadAttention
from attnkit.layers import TransformerBlock
from attnkit.models.causal_lm import CausalLM
from attnkit.positions import LearnedPositions, SinusoidalPositions

__all__ = ["StaticDecoder", "supports", "PACK_MIN_ROWS"]

#: Fewest rows for which the decoder packs its weights for MKL (see the module docstring).
PACK_MIN_ROWS = 4

_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> compiled step


def _can_pack(model: CausalLM) -> bool:
    w = model.lm_head.weight
    return (w.device.type == "cpu" and w.dtype == torch.float32
            and torch.backends.mkl.is_available()
            and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"))


# The CausalLMConfig fields the step was written for; a field added later with a value other
# than its default makes the model unsupported (the step would silently ignore it).
_KNOWN_FIELDS = frozenset({
    "vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff",
    "head_dim", "position", "rope_base", "rope_scaling", "activation", "norm", "norm_eps",
    "norm_position", "bias", "dropout", "attn_dropout", "tie_embeddings", "sliding_window",
    "backend", "init_std"})


def supports(model: torch.nn.Module) -> str | None:
    """None when :class:`StaticDecoder` can decode ``model``, else the reason it cannot."""
    if not isinstance(model, CausalLM):
        return f"{type(model).__name__} is not a CausalLM"
    c = model.config
    for f in dataclasses.fields(c):
        if f.name not in _KNOWN_FIELDS and f.default is not dataclasses.MISSING \
                and getattr(c, f.name) != f.default:
            return f"config field {f.name}={getattr(c, f.name)!r} is not known to the step"
    if c.position not in ("learned", "sinusoidal", "rope", "none"):
        return f"position={c.position!r} (a score modifier) is not supported"
    if c.backend == "linear":
        return "backend='linear' is an approximation the static step does not compute"
    if c.activation not in ("relu", "gelu", "gelu_tanh", "swiglu"):
        return f"activation={c.activation!r} is not supported"
    for layer in model.stack.layers:
        if type(layer) is not TransformerBlock or layer.cfg.cross_attention \
                or type(layer.attn) is not MultiHeadAttention:
            return "a block other than a self-attention TransformerBlock"
    return None


class StaticDecoder:
    """Decodes ``batch`` rows of one :class:`CausalLM` into KV buffers of ``max_len`` slots.

    ``compile=True`` runs the step through ``torch.compile(fullgraph=True, dynamic=False)``;
    the compiled step is kept per model (and shape), so later generations reuse it.
    ``pack``: run the Linears on MKL-packed weights (None: when ``batch >= PACK_MIN_ROWS``
    on CPU in fp32, eager only). Use under ``torch.no_grad()`` with the model in eval mode.
    """

    def __init__(self, model: CausalLM, batch: int, max_len: int, *, compile: bool = False,
                 pack: bool | None = None):
        why = supports(model)
        if why is not None:
            raise ValueError(f"StaticDecoder cannot decode this model: {why}")
        self.model, self.batch, self.max_len = model, batch, max_len
        w = model.lm_head.weight
        dev = w.device
        self.caches = [layer.attn.new_cache(batch, max_len) for layer in model.stack.layers]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=dev)
        self.positions = torch.zeros(batch, dtype=torch.long, device=dev)
        self.slot = 0
        self.tables = _position_tables(model, max_len, w.dtype)
        self._step = _compiled_step(model) if compile else _step
        if pack is None:
            pack = batch >= PACK_MIN_ROWS and not compile and _can_pack(model)
        elif pack and (compile or not _can_pack(model)):
            raise ValueError("pack=True needs eager decoding of an fp32 CPU model with MKL")
        self.packed = _pack(model, batch) if pack else {}

    def prefill(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Run the model over ``ids (B, L)`` (``mask`` True = real token), filling the caches;
        return the last position's logits ``(B, V)``."""
        L = ids.shape[1]
        if L >= self.max_len:
            raise ValueError(f"prompt of {L} tokens leaves no room in max_len={self.max_len}")
        logits = self.model(ids, attention_mask=mask, caches=self.caches).logits[:, -1]
        self.valid[:, :L] = mask
        self.positions = mask.long().sum(-1)  # the next real token's position, per row
        self.slot = L
        return logits

    def step(self, tokens: Tensor, feed: Tensor) -> Tensor:
        """Append ``tokens (B,)`` at the next slot (rows with ``feed`` False are padding:
        masked from later steps, their logits meaningless); return logits ``(B, V)``."""
        if self.slot >= self.max_len:
            raise ValueError(f"StaticDecoder is full: {self.max_len} slots used")
        self.valid[:, self.slot] = feed
        slot = torch.tensor(self.slot, device=self.valid.device)
        # eager steps attend over the filled slots only (a view); a compiled step keeps all
        # max_len slots, so its shapes never change
        n = self.max_len if self._step is not _step else self.slot + 1
        logits = self._step(self.model, self.tables, [c.k[:, :, :n] for c in self.caches],
                            [c.v[:, :, :n] for c in self.caches], tokens, slot,
                            self.positions, self.valid[:, :n], self.packed)
        self.positions = self.positions + feed.long()
        self.slot += 1
        return logits


def _position_tables(model: CausalLM, max_len: int, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """What the step indexes by position: the learned / sinusoidal table, or RoPE's cos, sin
    ``(max_len, D)``, built once up front (no host-side bound checks inside the step)."""
    pe = model.pos_emb
    if isinstance(pe, LearnedPositions):
        return (pe.emb.weight,)
    if isinstance(pe, SinusoidalPositions):
        return (pe(range(max_len)),)
    if model.rope is not None:
        return model.rope.cos_sin(range(max_len), dtype)
    return ()


def _pack(model: CausalLM, rows: int) -> dict[torch.nn.Linear, Tensor]:
    """Every Linear's weight reordered for MKL's packed GEMM with ``rows`` rows."""
    with torch.no_grad():
        return {m: torch.ops.mkl._mkl_reorder_linear_weight(m.weight.detach(), rows)
                for m in model.modules() if isinstance(m, torch.nn.Linear)}


def _linear(module: torch.nn.Linear, x: Tensor, packed: dict) -> Tensor:
    w = packed.get(module) if packed else None
    if w is None:
        return module(x)
    return torch.ops.mkl._mkl_linear(x, w, module.weight, module.bias, x.shape[0])


def _ffn(ffn, x: Tensor, packed: dict) -> Tensor:
    """:class:`~attnkit.layers.FeedForward` with :func:`_linear`."""
    h = _linear(ffn.w1, x, packed)
    if ffn.activation == "swiglu":
        h = F.silu(h) * _linear(ffn.w3, x, packed)
    elif ffn.activation == "relu":
        h = F.relu(h)
    elif ffn.activation == "gelu":
        h = F.gelu(h)
    else:
        h = F.gelu(h, approximate="tanh")
    return _linear(ffn.w2, h, packed)


def _compiled_step(model: CausalLM) -> Callable:
    step = _STEPS.get(model)
    if step is None:
        step = torch.compile(_step, fullgraph=True, dynamic=False)
        _STEPS[model] = step
    return step


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE, rotate-half convention (:func:`attnkit.positions.apply_rotary`)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _step(model: CausalLM, tables: tuple[Tensor, ...], ks: list[Tensor], vs: list[Tensor],
          tokens: Tensor, slot: Tensor, positions: Tensor, valid: Tensor,
          packed: dict) -> Tensor:
    """One token per row through every layer (see the module docstring); ``ks`` / ``vs``:
    each layer's ``(B, Hkv, S, D)`` buffers (all ``max_len`` slots, or the filled prefix),
    written in place at ``slot``; ``valid (B, S)``; ``packed``:
    Linear -> MKL-packed weight (empty: plain ``F.linear``)."""
    c = model.config
    B, S = valid.shape
    x = model.tok_emb(tokens[:, None])  # (B, 1, d)
    if len(tables) == 1:  # learned / sinusoidal positions, added to the embedding
        x = x + tables[0][positions][:, None].to(x.dtype)
    rope = None
    if len(tables) == 2:  # RoPE: (B, 1, 1, D) for q (B, H, 1, D) and k (B, Hkv, 1, D)
        rope = tables[0][positions][:, None, None], tables[1][positions][:, None, None]
    kv_idx = torch.arange(S, device=valid.device)
    keys = valid & (kv_idx <= slot)
    if c.sliding_window is not None:
        keys = keys & (kv_idx > slot - c.sliding_window)
    # one additive bias for every layer (a bool mask is converted inside each SDPA call)
    bias = torch.zeros(keys.shape, dtype=x.dtype, device=x.device).masked_fill_(
        ~keys, float("-inf"))[:, None, None, :]  # (B, 1, 1, S)
    for layer, K, V in zip(model.stack.layers, ks, vs, strict=True):
        attn = layer.attn
        pre = layer.cfg.norm_position == "pre"
        h = layer.norm1(x) if pre else x
        q_dim, kv_dim = attn.n_heads * attn.head_dim, attn.n_kv_heads * attn.head_dim
        q, k, v = _linear(attn.qkv, h[:, 0], packed).split([q_dim, kv_dim, kv_dim], dim=-1)
        q = q.view(B, 1, attn.n_heads, attn.head_dim).transpose(1, 2)  # (B, H, 1, D)
        k = k.view(B, 1, attn.n_kv_heads, attn.head_dim).transpose(1, 2)  # (B, Hkv, 1, D)
        v = v.view(B, 1, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = _rotate(q, *rope), _rotate(k, *rope)
        K.index_copy_(2, slot.view(1), k)
        V.index_copy_(2, slot.view(1), v)
        scale = 1.0 / math.sqrt(attn.head_dim) if attn.scale is None else float(attn.scale)
        o = F.scaled_dot_product_attention(q, K, V, attn_mask=bias, scale=scale,
                                           enable_gqa=attn.n_kv_heads != attn.n_heads)
        a = _linear(attn.out_proj, o.reshape(B, q_dim), packed)[:, None]  # (B, 1, d)
        if pre:
            x = x + a
            x = x + _ffn(layer.ffn, layer.norm2(x)[:, 0], packed)[:, None]
        else:
            x = layer.norm1(x + a)
            x = layer.norm2(x + _ffn(layer.ffn, x[:, 0], packed)[:, None])
    if model.stack.final_norm is not None:
        x = model.stack.final_norm(x)
    return _linear(model.lm_head, x[:, 0], packed)  # (B, V)
