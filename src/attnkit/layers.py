"""Transformer building blocks: norms, feed-forward networks and the block that joins them.

A block is a residual stack of sublayers — self-attention, optional cross-attention (decoders
of encoder–decoder models), feed-forward — each wrapped either way:

    post-norm (Vaswani et al. 2017):   x = Norm(x + Sublayer(x))
    pre-norm  (GPT-2, LLaMA):          x = x + Sublayer(Norm(x))

Pre-norm keeps an identity path from input to output and trains stably without warm-up;
pre-norm models add one final norm after the last block (the model's job, not the block's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.attention import backends
from attnkit.attention.core import MaskArg
from attnkit.attention.multihead import Cache, MultiHeadAttention, RopeFn
from attnkit.attention.score_mods import ScoreMod
from attnkit.validate import fraction, number, one_of, positive_int

__all__ = ["LayerNorm", "RMSNorm", "make_norm", "FeedForward", "BlockConfig", "TransformerBlock"]

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu")


class LayerNorm(nn.LayerNorm):
    """``(x - mean) / sqrt(var + eps) · g + b`` over the last dim; ``bias=False`` drops ``b``."""

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(d, eps=eps, bias=bias)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) · g`` (Zhang & Sennrich 2019): no centring, no bias.

    Normalised in fp32, cast back, then scaled — exactly HF ``LlamaRMSNorm`` / ``T5LayerNorm``.
    """

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: str, d: int, eps: float, bias: bool = True) -> nn.Module:
    """``"layernorm"`` or ``"rmsnorm"`` (which never has a bias)."""
    if kind == "layernorm":
        return LayerNorm(d, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(d, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; valid: 'layernorm', 'rmsnorm'")


class FeedForward(nn.Module):
    """Position-wise feed-forward network.

        relu / gelu / gelu_tanh:  FFN(x) = W2 act(W1 x)
        swiglu (Shazeer 2020):    FFN(x) = W2 (silu(W1 x) ⊙ W3 x)

    (LLaMA names: ``W1 = gate_proj``, ``W3 = up_proj``, ``W2 = down_proj``.) Dropout on the
    output (training only).
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", *, bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        self.activation = activation
        self.w1 = nn.Linear(d_model, d_ff, bias=bias)
        self.w3 = nn.Linear(d_model, d_ff, bias=bias) if activation == "swiglu" else None
        self.w2 = nn.Linear(d_ff, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, d_model) -> (B, L, d_model)
        h = self.w1(x)  # (B, L, d_ff)
        if self.activation == "swiglu":
            h = F.silu(h) * self.w3(x)
        elif self.activation == "relu":
            h = F.relu(h)
        elif self.activation == "gelu":
            h = F.gelu(h)
        else:
            h = F.gelu(h, approximate="tanh")
        return self.drop(self.w2(h))


@dataclass
class BlockConfig:
    """Hyper-parameters of one :class:`TransformerBlock`.

    ``d_ff`` defaults to ``4·d_model`` (use ``≈ 8/3·d_model`` for SwiGLU at equal parameters);
    ``bias`` applies to every Linear and LayerNorm; ``dropout`` is the residual / FFN dropout;
    ``attn_scale`` multiplies ``q kᵀ`` in every attention (default ``1/√head_dim``; T5: 1.0).

    Validated on construction — every model family's config builds one, so a bad width or
    head count is reported when the config is made, naming the field to fix.
    """

    d_model: int
    n_heads: int
    n_kv_heads: int | None = None
    d_ff: int | None = None
    activation: str = "gelu"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_position: str = "pre"
    dropout: float = 0.0
    attn_dropout: float = 0.0
    bias: bool = True
    cross_attention: bool = False
    head_dim: int | None = None
    backend: str = "auto"
    attn_scale: float | None = None

    def __post_init__(self) -> None:
        positive_int("d_model", self.d_model)
        positive_int("n_heads", self.n_heads)
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        positive_int("d_ff", self.d_ff)
        if self.n_kv_heads is not None:
            positive_int("n_kv_heads", self.n_kv_heads)
            if self.n_heads % self.n_kv_heads:
                raise ValueError(
                    f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                    f"({self.n_kv_heads}); valid n_kv_heads: {_divisors(self.n_heads)}")
        if self.head_dim is not None:
            positive_int("head_dim", self.head_dim)
        elif self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads}): set "
                f"n_heads to a divisor of d_model ({_divisors(self.d_model)}) or set head_dim")
        if self.norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position must be 'pre' or 'post', got {self.norm_position!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid: {ACTIVATIONS}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"unknown norm {self.norm!r}; valid: 'layernorm', 'rmsnorm'")
        number("norm_eps", self.norm_eps, low=0.0, low_open=True)
        fraction("dropout", self.dropout)
        fraction("attn_dropout", self.attn_dropout)
        if self.attn_scale is not None:
            number("attn_scale", self.attn_scale, low=0.0, low_open=True)
        one_of("backend", self.backend, ("auto", *backends.NAMES))


def _divisors(n: int, at_most: int = 12) -> str:
    """``"1, 2, 4, ..."`` — the first divisors of ``n`` (for error messages)."""
    ds = [d for d in range(1, n + 1) if n % d == 0]
    return ", ".join(map(str, ds[:at_most])) + (", ..." if len(ds) > at_most else "")


class TransformerBlock(nn.Module):
    """Self-attention [+ cross-attention] + feed-forward, each a residual sublayer with a norm
    before (``pre``) or after (``post``) it. See the module docstring for the two orderings."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model

        def attn(cross: bool) -> MultiHeadAttention:
            return MultiHeadAttention(
                d, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, qkv_bias=cfg.bias,
                out_bias=cfg.bias, attn_dropout=cfg.attn_dropout, resid_dropout=cfg.dropout,
                is_cross=cross, backend=cfg.backend, scale=cfg.attn_scale)

        self.norm1 = make_norm(cfg.norm, d, cfg.norm_eps, cfg.bias)
        self.attn = attn(False)
        if cfg.cross_attention:
            self.norm_cross = make_norm(cfg.norm, d, cfg.norm_eps, cfg.bias)
            self.cross_attn = attn(True)
        self.norm2 = make_norm(cfg.norm, d, cfg.norm_eps, cfg.bias)
        self.ffn = FeedForward(d, cfg.d_ff, cfg.activation, bias=cfg.bias, dropout=cfg.dropout)
        self.last_cross_weights: Tensor | None = None

    def _residual(self, x: Tensor, norm: nn.Module, sublayer) -> Tensor:
        """pre: ``x + f(Norm(x))``; post: ``Norm(x + f(x))``."""
        if self.cfg.norm_position == "pre":
            return x + sublayer(norm(x))
        return norm(x + sublayer(x))

    def forward(
        self,
        x: Tensor,
        *,
        mask: MaskArg = None,
        context: Tensor | None = None,
        context_mask: MaskArg = None,
        score_mod: ScoreMod | None = None,
        rope: RopeFn | None = None,
        positions: Tensor | range | None = None,
        cache: Cache | None = None,
        cross_cache: Cache | None = None,
        return_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``x (B, L, d_model) -> (x, self-attention weights (B, H, Lq, Lk) or None)``.

        ``mask``/``score_mod``/``rope``/``positions``/``cache`` go to self-attention;
        ``context (B, Lc, d_model)``, ``context_mask`` and ``cross_cache`` to cross-attention.
        With ``return_weights`` the cross-attention weights are kept in ``last_cross_weights``.
        """
        if (self.cfg.norm_position == "pre" and not self.cfg.cross_attention
                and not return_weights and context is None and cross_cache is None):
            # the common decoder / encoder layer, without the closures below
            x = x + self.attn(self.norm1(x), mask=mask, score_mod=score_mod, rope=rope,
                              positions=positions, cache=cache)
            return x + self.ffn(self.norm2(x)), None
        weights: Tensor | None = None

        def self_attn(h: Tensor) -> Tensor:
            nonlocal weights
            out = self.attn(h, mask=mask, score_mod=score_mod, rope=rope, positions=positions,
                            cache=cache, return_weights=return_weights)
            if return_weights:
                out, weights = out
            return out

        x = self._residual(x, self.norm1, self_attn)
        if self.cfg.cross_attention:
            if context is None and (cross_cache is None or cross_cache.pos == 0):
                raise ValueError("this block has cross-attention: pass context=(B, Lc, d_model)")

            def cross_attn(h: Tensor) -> Tensor:
                out = self.cross_attn(h, context=context, mask=context_mask, cache=cross_cache,
                                      return_weights=return_weights)
                if return_weights:
                    out, self.last_cross_weights = out
                return out

            x = self._residual(x, self.norm_cross, cross_attn)
        elif context is not None or cross_cache is not None:
            raise ValueError("context/cross_cache given but BlockConfig.cross_attention is False")
        x = self._residual(x, self.norm2, self.ffn)
        return x, weights
