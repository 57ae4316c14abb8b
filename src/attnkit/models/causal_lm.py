"""Decoder-only causal language models: GPT-2, LLaMA, Mistral and friends as one module.

    h_0  = E[x] (+ P[pos])                      token embedding (+ absolute positions)
    h_l  = Block_l(h_{l-1})                     causal self-attention + FFN, l = 1..n_layers
    p(x_{t+1} | x_{≤t}) = softmax(Norm(h_L) W_headᵀ)

One :class:`CausalLMConfig` covers the family: positions are learned / sinusoidal tables added to
the embeddings, RoPE applied to q and k, ALiBi added to the scores, or none; the blocks are any
:class:`~attnkit.layers.BlockConfig` (LayerNorm/RMSNorm, GELU/SwiGLU, GQA, pre/post-norm).

Masks (``q_idx`` in key coordinates, so the same mask serves the prefill and KV-cache steps)::

    causal()                                  every query sees itself and the past
    sliding_window(w - 1, 0)                  Mistral: the w most recent keys, itself included
    & padding(key_mask=attention_mask)        left/right padding of a batch

Left-padded batches get positions from the mask, ``cumsum(attention_mask) - 1`` (what HF
``generate`` does), so a sequence's real tokens see the same positions with or without padding.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.attention import masks
from attnkit.attention.multihead import Cache
from attnkit.attention.score_mods import alibi
from attnkit.layers import ACTIVATIONS, BlockConfig, LayerNorm, RMSNorm
from attnkit.models.config import ModelConfig
from attnkit.models.stacks import TransformerStack
from attnkit.positions import (
    LearnedPositions,
    RotaryEmbedding,
    SinusoidalPositions,
    position_range,
)
from attnkit.validate import (
    host_check_is_free,
    nonempty_ids,
    nonneg_int,
    number,
    positive_int,
    token_ids,
)

__all__ = ["CausalLMConfig", "CausalLM", "CausalLMOutput"]

POSITIONS = ("learned", "rope", "alibi", "sinusoidal", "none")


@dataclass
class CausalLMConfig(ModelConfig):
    """Hyper-parameters of a :class:`CausalLM`.

    ``vocab_size=0`` means "not set yet" (e.g. ``char-gpt``, whose vocabulary comes from the
    data): the config is valid, building a model from it is not. ``n_kv_heads`` (GQA) defaults
    to ``n_heads``; ``d_ff`` to ``4·d_model``; ``head_dim`` to ``d_model // n_heads``.
    ``rope_scaling``: None or ``{"type": "linear" | "ntk", "factor": f}``.
    ``sliding_window``: each query attends to the ``sliding_window`` most recent positions,
    itself included (HF Mistral semantics). ``backend``: the :func:`~attnkit.attend` backend.
    """

    family: ClassVar[str] = "causal_lm"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # GPT-2 small (Radford et al. 2019): 124,439,808 parameters with the tied head.
        "gpt2-small": dict(vocab_size=50257, max_seq_len=1024, d_model=768, n_layers=12,
                           n_heads=12, d_ff=3072),
        "gpt2-tiny": dict(vocab_size=256, max_seq_len=128, d_model=64, n_layers=2, n_heads=4,
                          d_ff=256),
        "llama-tiny": dict(vocab_size=256, max_seq_len=256, d_model=64, n_layers=2, n_heads=4,
                           n_kv_heads=2, d_ff=176, position="rope", activation="swiglu",
                           norm="rmsnorm", norm_eps=1e-6, bias=False, tie_embeddings=False),
        # nanoGPT's Shakespeare-char recipe, scaled down; set vocab_size from the data. Exact
        # GELU as nanoGPT's nn.GELU() (the tanh form is GPT-2's, kept for its checkpoints; on
        # CPU it costs ~4x the erf form's fwd+bwd: 3.9 vs 0.96 ms at 768x512, 1 thread).
        "char-gpt": dict(vocab_size=0, max_seq_len=64, d_model=128, n_layers=4, n_heads=4,
                         dropout=0.1, activation="gelu"),
    }

    vocab_size: int
    max_seq_len: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    d_ff: int | None = None
    head_dim: int | None = None
    position: str = "learned"
    rope_base: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    activation: str = "gelu_tanh"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_position: str = "pre"
    bias: bool = True
    dropout: float = 0.0
    attn_dropout: float = 0.0
    tie_embeddings: bool = True
    sliding_window: int | None = None
    backend: str = "auto"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("max_seq_len", "d_model", "n_layers", "n_heads"):
            positive_int(name, getattr(self, name))
        nonneg_int("vocab_size (0 = not set)", self.vocab_size)
        if self.position not in POSITIONS:
            raise ValueError(f"unknown position {self.position!r}; valid: {POSITIONS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid: {ACTIVATIONS}")
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            if (not isinstance(rs, dict) or set(rs) != {"type", "factor"}
                    or rs["type"] not in ("linear", "ntk")):
                raise ValueError("rope_scaling must be None or {'type': 'linear' | 'ntk', "
                                 f"'factor': f}}, got {rs!r}")
            number("rope_scaling factor", rs["factor"], low=0.0, low_open=True)
        if self.sliding_window is not None:
            positive_int("sliding_window (None = no window)", self.sliding_window)
        number("rope_base", self.rope_base, low=0.0, low_open=True)
        number("init_std", self.init_std, low=0.0)
        self.block_config()  # d_model / n_heads / head_dim, norms, dropouts, backend
        if self.position == "rope" and self.resolved_head_dim % 2:
            raise ValueError(f"position='rope' rotates pairs of features: head_dim must be even, "
                             f"got {self.resolved_head_dim} (d_model {self.d_model} / n_heads "
                             f"{self.n_heads}); set head_dim or n_heads")
        if self.position == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"position='sinusoidal' needs an even d_model, got {self.d_model}")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    def block_config(self) -> BlockConfig:
        return BlockConfig(
            d_model=self.d_model, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
            d_ff=self.d_ff, activation=self.activation, norm=self.norm, norm_eps=self.norm_eps,
            norm_position=self.norm_position, dropout=self.dropout,
            attn_dropout=self.attn_dropout, bias=self.bias, head_dim=self.head_dim,
            backend=self.backend)


@dataclass
class CausalLMOutput:
    """What :meth:`CausalLM.forward` returns."""

    logits: Tensor  # (B, L, V)
    loss: Tensor | None = None  # scalar: next-token cross-entropy when labels are given
    hidden_states: list[Tensor] = field(default_factory=list)  # n_layers + 1 of (B, L, d)
    attentions: list[Tensor] = field(default_factory=list)  # per layer (B, H, L, Lk)


# A pytree node, so that torch.export can return it from an exported forward.
torch.export.register_dataclass(CausalLMOutput, serialized_type_name="attnkit.CausalLMOutput")


# One shared causal pattern, built once rather than per forward: a constant for
# torch.compile. (Its caches are bounded: masks.ShapeCache keeps a few forms per kind.)
_CAUSAL = masks.causal()


@functools.lru_cache(maxsize=16)
def _window_mask(window: int) -> masks.Mask:
    """One shared ``sliding_window(window - 1, 0)`` per window size, for the same reasons as
    ``_CAUSAL`` and because its tile layout and block plan are cached on the object: built per
    forward, they cost more than the attention (context 4096, window 256: ~0.7 s layout + ~0.8
    s plan against ~0.07 s for the blocked kernel's forward)."""
    return masks.sliding_window(window - 1, 0)


class CausalLM(nn.Module):
    """Token embedding → positions → :class:`TransformerStack` → LM head (tied or not).

    Init (GPT-2 / nanoGPT): every Linear and Embedding weight ~ N(0, init_std), biases 0,
    norm gains 1; the two residual projections of each block (attention ``out_proj`` and FFN
    ``w2``) ~ N(0, init_std / sqrt(2·n_layers)) so the residual stream's variance does not
    grow with depth (GPT-2 paper, §2.3).
    """

    def __init__(self, config: CausalLMConfig):
        super().__init__()
        if config.vocab_size < 1:
            raise ValueError("vocab_size is not set (0); build the config with e.g. "
                             "CausalLMConfig.preset('char-gpt', vocab_size=65)")
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb: nn.Module | None = None
        self.rope: RotaryEmbedding | None = None
        self.score_mod = None
        if c.position == "learned":
            self.pos_emb = LearnedPositions(c.max_seq_len, c.d_model)
        elif c.position == "sinusoidal":
            self.pos_emb = SinusoidalPositions(c.d_model, c.max_seq_len)
        elif c.position == "rope":
            scaling = (None if c.rope_scaling is None
                       else (c.rope_scaling["type"], float(c.rope_scaling["factor"])))
            self.rope = RotaryEmbedding(c.resolved_head_dim, c.rope_base, scaling, c.max_seq_len)
        elif c.position == "alibi":
            self.score_mod = alibi(c.n_heads)
        self.drop = nn.Dropout(c.dropout)
        self.stack = TransformerStack(c.block_config(), c.n_layers,
                                      final_norm=c.norm_position == "pre")
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.reset_parameters()
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init (see the class docstring)."""
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (LayerNorm, RMSNorm)):
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        resid_std = std / math.sqrt(2 * self.config.n_layers)
        for layer in self.stack.layers:
            nn.init.normal_(layer.attn.out_proj.weight, 0.0, resid_std)
            nn.init.normal_(layer.ffn.w2.weight, 0.0, resid_std)

    # ---- bookkeeping --------------------------------------------------------------------
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (a tied head counts once). ``exclude_embeddings`` drops the
        token table (and with it a tied head) and a learned position table."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if isinstance(self.pos_emb, LearnedPositions):
                n -= self.pos_emb.emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward) at context ``seq_len``::

            6·N + 12·n_layers·(n_heads·head_dim)·seq_len

        (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, App. B). ``6N``: 2 FLOPs per
        multiply-add, ×3 for forward + backward, over the N weights of matmuls — all
        parameters except the embedding lookup tables, plus the LM head (counted even when tied,
        as nanoGPT does). The second term is QKᵀ and AV; ``n_heads·head_dim == d_model`` in the
        usual configs. It ignores the causal mask's halving, norms and softmax.
        """
        c = self.config
        n = self.num_parameters(exclude_embeddings=True)
        if c.tie_embeddings:
            n += self.lm_head.weight.numel()
        return 6 * n + 12 * c.n_layers * c.n_heads * c.resolved_head_dim * seq_len

    def new_caches(self, batch: int, max_len: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None) -> list[Cache]:
        """One empty cache per layer for generation: :class:`KVCache` of ``max_len``
        positions, or :class:`SlidingWindowCache` of ``sliding_window`` when it is set (and
        shorter than ``max_len``)."""
        w = self.config.sliding_window
        return [layer.attn.new_cache(batch, max_len, window=w, dtype=dtype, device=device)
                for layer in self.stack.layers]

    # ---- forward ------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        positions: Tensor | None = None,
        caches: list[Cache] | None = None,
        labels: Tensor | None = None,
        return_weights: bool = False,
        output_hidden_states: bool = False,
    ) -> CausalLMOutput:
        """Next-token logits for ``input_ids (B, L)``.

        Args:
            attention_mask: ``(B, Lt)`` bool or 0/1, True/1 = real token; ``Lt`` counts every
                token seen so far, i.e. ``L`` without caches and ``caches[0].pos + L`` with.
            positions: absolute positions ``(L,)`` or ``(B, L)``; default
                ``cumsum(attention_mask) - 1`` with a mask, else ``past + arange(L)``.
            caches: from :meth:`new_caches`, updated in place (use under ``torch.no_grad()``).
            labels: ``(B, L)`` targets aligned with ``input_ids``; the loss is the mean
                cross-entropy of ``logits[:, t]`` against ``labels[:, t + 1]`` (ignore -100).
            return_weights: per-layer attention probabilities ``(B, H, L, Lk)``.
            output_hidden_states: the input of every layer and the final (normed) output.

        Token ids (and labels) outside ``0 .. vocab_size - 1`` are a ``ValueError`` naming the
        id (checked in eager mode on the CPU, and in eval mode elsewhere: on an accelerator a
        training step never waits on the device). Empty ``input_ids`` are an error too.
        """
        c = self.config
        B, L = nonempty_ids("input_ids", input_ids).shape
        if host_check_is_free(input_ids, training=self.training):
            token_ids(input_ids, c.vocab_size)
            if labels is not None:
                token_ids(labels, c.vocab_size, name="labels", ignore=-100)
        past = caches[0].pos if caches else 0
        if caches is not None and len(caches) != c.n_layers:
            raise ValueError(f"expected {c.n_layers} caches (one per layer), got {len(caches)}")

        key_mask = None
        if attention_mask is not None:
            if attention_mask.shape != (B, past + L):
                raise ValueError(
                    f"attention_mask must be (B, past + L) = {(B, past + L)} (it covers every "
                    f"token seen so far), got {tuple(attention_mask.shape)}")
            key_mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
        if positions is None:
            if key_mask is not None:
                positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                # a range, known on the host: checked without a device sync (a tensor when
                # compiling, so that a dynamic length stays dynamic)
                positions = position_range(past, L, input_ids.device)

        x = self.tok_emb(input_ids)  # (B, L, d)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions).to(x.dtype)
        x = self.drop(x)

        mask = _CAUSAL if c.sliding_window is None else _window_mask(c.sliding_window)
        # An all-ones attention_mask (an unpadded batch, what tokenizers return) adds nothing:
        # keep the pure causal pattern so attend() takes SDPA's is_causal path instead of a
        # dense (B, 1, L, L) bool mask (CPU, per attention call: ~1.2x / 1.1x slower fwd /
        # fwd+bwd at L=256, ~1.7x / 1.5x at L=1024). One host sync, only when a mask is given
        # and only in eager mode: a compiled graph cannot branch on data, so it always masks.
        if key_mask is not None and (torch.compiler.is_compiling() or not bool(key_mask.all())):
            if caches is not None and c.sliding_window is not None:
                # a SlidingWindowCache returns only the last min(past, w - 1) + L keys
                key_mask = key_mask[:, past - min(past, c.sliding_window - 1):]
            mask = mask & masks.padding(key_mask=key_mask)

        # ALiBi: one materialised bias per forward, shared by the layers (on the SDPA path)
        score_mod = (self.score_mod.for_one_forward()
                     if self.score_mod is not None and not torch.compiler.is_compiling()
                     else self.score_mod)
        out = self.stack(x, mask=mask, score_mod=score_mod, rope=self.rope,
                         positions=positions, caches=caches,
                         output_hidden_states=output_hidden_states, return_weights=return_weights)
        logits = self.lm_head(out.hidden)  # (B, L, V)
        loss = None
        if labels is not None:
            # Shift the labels, not the logits: logits[:, t] against labels[:, t + 1], the last
            # position ignored. Slicing logits[:, :-1] would copy (B, L-1, V) in the forward and
            # zero-fill + copy (B, L, V) in the backward (large with a 50k vocabulary).
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)
            loss = F.cross_entropy(logits.flatten(0, 1).float(),
                                   targets.flatten().to(logits.device), ignore_index=-100)
        return CausalLMOutput(logits=logits, loss=loss, hidden_states=out.hidden_states,
                              attentions=out.attentions)
