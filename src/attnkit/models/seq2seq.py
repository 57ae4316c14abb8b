"""Encoder–decoder language models: the original Transformer and T5.

Both are ``shared embedding -> encoder stack -> decoder stack (+ cross-attention) -> LM head``:

* **Transformer** (Vaswani et al. 2017, "Attention Is All You Need"): sinusoidal positions
  added to embeddings scaled by ``√d_model`` (§3.4), post-norm blocks with LayerNorm and biases,
  ReLU FFN, scores scaled by ``1/√d_k``, the pre-softmax projection tied to the embedding.
* **T5** (Raffel et al. 2020, "Exploring the Limits of Transfer Learning ..."): no absolute
  positions; a learned relative position bias (bucketed offsets, one table for the encoder and
  one for the decoder, shared by all layers of a stack) added to the *unscaled* scores
  ``q·k``; pre-norm blocks with RMSNorm (``T5LayerNorm``), no biases, a final norm per stack;
  ReLU FFN (T5 v1.0) or gated-GELU (T5 v1.1: ``wo(gelu_tanh(wi_0 x) ⊙ wi_1 x)``); with a tied
  head the decoder output is scaled by ``d_model^-0.5`` before it.

Shapes: token ids ``(B, L)``; hidden ``(B, L, d_model)``; logits ``(B, Lt, vocab)``; attention
weights ``(B, H, Lq, Lk)``. Masks given as ``(B, L)`` tensors are 1/True for real tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.attention import masks
from attnkit.attention.cache import KVCache
from attnkit.attention.relative_bias import RelativePositionBias
from attnkit.layers import BlockConfig, FeedForward
from attnkit.models.config import ModelConfig
from attnkit.models.stacks import StackOutput, TransformerStack
from attnkit.positions import SinusoidalPositions, position_range
from attnkit.validate import host_check_is_free, nonempty_ids, positive_int, token_ids

__all__ = ["Seq2SeqConfig", "Seq2SeqLM", "Seq2SeqOutput", "DecoderState", "GatedGeluFeedForward",
           "shift_right"]

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu", "geglu")
POSITIONS = ("sinusoidal", "relative")
EMBED_SCALES = ("none", "input", "output")


@dataclass
class Seq2SeqConfig(ModelConfig):
    """Hyper-parameters of a :class:`Seq2SeqLM` (defaults: T5-small).

    ``n_layers`` encoder and ``n_decoder_layers`` decoder blocks (default ``n_layers``);
    ``head_dim`` is T5's ``d_kv`` (``n_heads·head_dim`` need not equal ``d_model``).
    ``activation``: relu | gelu | gelu_tanh | swiglu | geglu (gated tanh-GELU: T5 v1.1's
    "gated-gelu").
    ``attn_scale``: multiplier on ``q·k`` (T5: 1.0; ``None`` = ``1/√head_dim``).
    ``scale_embeddings``: "input" multiplies embeddings by ``√d_model`` (Vaswani §3.4),
    "output" multiplies the decoder output by ``d_model^-0.5`` before the LM head (T5 with a
    tied head), "none" neither. ``tie_embeddings``: the LM head reuses the shared embedding.
    """

    family: ClassVar[str] = "seq2seq"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # Vaswani et al. 2017, Table 3 "base" (shared 37k BPE vocabulary, EN-DE).
        "transformer-base": dict(
            vocab_size=37000, d_model=512, n_layers=6, n_decoder_layers=6, n_heads=8, d_ff=2048,
            head_dim=None, position="sinusoidal", activation="relu", norm="layernorm",
            norm_position="post", norm_eps=1e-6, bias=True, attn_scale=None, dropout=0.1,
            tie_embeddings=True, scale_embeddings="input"),
        # google-t5/t5-small (T5 v1.0).
        "t5-small": dict(
            vocab_size=32128, d_model=512, n_layers=6, n_decoder_layers=6, n_heads=8, d_ff=2048,
            head_dim=64),
        "t5-tiny": dict(
            vocab_size=32128, d_model=64, n_layers=2, n_decoder_layers=2, n_heads=4, d_ff=128,
            head_dim=16),
    }

    vocab_size: int = 32128
    d_model: int = 512
    n_layers: int = 6
    n_decoder_layers: int | None = None
    n_heads: int = 8
    d_ff: int = 2048
    head_dim: int | None = 64
    position: str = "relative"
    relative_num_buckets: int = 32
    relative_max_distance: int = 128
    activation: str = "relu"
    norm: str = "rmsnorm"
    norm_position: str = "pre"
    norm_eps: float = 1e-6
    bias: bool = False
    attn_scale: float | None = 1.0
    dropout: float = 0.1
    tie_embeddings: bool = True
    scale_embeddings: str = "output"
    pad_token_id: int = 0
    decoder_start_token_id: int = 0
    eos_token_id: int | None = 1

    def __post_init__(self) -> None:
        if self.n_decoder_layers is None:
            self.n_decoder_layers = self.n_layers
        for name in ("vocab_size", "d_model", "n_layers", "n_decoder_layers", "n_heads", "d_ff"):
            positive_int(name, getattr(self, name))
        for name, val, valid in (("position", self.position, POSITIONS),
                                 ("activation", self.activation, ACTIVATIONS),
                                 ("norm", self.norm, ("layernorm", "rmsnorm")),
                                 ("norm_position", self.norm_position, ("pre", "post")),
                                 ("scale_embeddings", self.scale_embeddings, EMBED_SCALES)):
            if val not in valid:
                raise ValueError(f"unknown {name} {val!r}; valid: {', '.join(valid)}")
        self.block(cross_attention=True)  # d_model / n_heads / head_dim, dropout, norm_eps
        if self.position == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        ids = ("pad_token_id", "decoder_start_token_id") + (
            ("eos_token_id",) if self.eos_token_id is not None else ())
        for name in ids:
            if not isinstance(getattr(self, name), int) or not 0 <= getattr(self, name) < \
                    self.vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} outside the vocabulary "
                                 f"[0, {self.vocab_size})")

    def block(self, *, cross_attention: bool) -> BlockConfig:
        """The :class:`BlockConfig` of encoder (``cross_attention=False``) or decoder blocks."""
        act = "gelu_tanh" if self.activation == "geglu" else self.activation  # FFN swapped later
        return BlockConfig(
            d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff, activation=act,
            norm=self.norm, norm_eps=self.norm_eps, norm_position=self.norm_position,
            dropout=self.dropout, bias=self.bias, cross_attention=cross_attention,
            head_dim=self.head_dim, attn_scale=self.attn_scale)


class GatedGeluFeedForward(FeedForward):
    """GEGLU feed-forward (Shazeer 2020, "GLU Variants Improve Transformer") with tanh-GELU::

        FFN(x) = W2 (gelu_tanh(W1 x) ⊙ W3 x)

    T5 v1.1's ``feed_forward_proj="gated-gelu"`` (HF ``gelu_new``; ``wi_0 = W1``, ``wi_1 = W3``,
    ``wo = W2``). Same parameters as the SwiGLU :class:`FeedForward`, only the gate differs.
    """

    def __init__(self, d_model: int, d_ff: int, *, bias: bool = True, dropout: float = 0.0):
        super().__init__(d_model, d_ff, "swiglu", bias=bias, dropout=dropout)
        self.activation = "geglu"

    def forward(self, x: Tensor) -> Tensor:  # (B, L, d_model) -> (B, L, d_model)
        h = F.gelu(self.w1(x), approximate="tanh") * self.w3(x)  # (B, L, d_ff)
        return self.drop(self.w2(h))


@dataclass
class Seq2SeqOutput:
    """Logits and, on request, loss, hidden states (input of each layer + final output) and
    attention weights of every layer."""

    logits: Tensor  # (B, Lt, vocab)
    loss: Tensor | None = None
    encoder_hidden: Tensor | None = None  # (B, Ls, d_model), last encoder state
    encoder_hidden_states: list[Tensor] = field(default_factory=list)
    decoder_hidden_states: list[Tensor] = field(default_factory=list)
    encoder_attentions: list[Tensor] = field(default_factory=list)  # (B, H, Ls, Ls)
    decoder_attentions: list[Tensor] = field(default_factory=list)  # (B, H, Lt, Lt)
    cross_attentions: list[Tensor] = field(default_factory=list)  # (B, H, Lt, Ls)


@dataclass
class DecoderState:
    """Everything incremental decoding carries between :meth:`Seq2SeqLM.decode_step` calls.

    ``self_caches``: one :class:`KVCache` per decoder layer (grows by the tokens fed);
    ``cross_caches``: the projected encoder output per layer, filled on the first step and
    reused afterwards (``encoder_hidden`` is not projected again).
    """

    encoder_hidden: Tensor  # (B, Ls, d_model)
    encoder_mask: Tensor | None  # (B, 1, 1, Ls) bool, True = real token
    self_caches: list[KVCache]
    cross_caches: list[KVCache]

    @property
    def pos(self) -> int:
        """Decoder tokens consumed so far (= absolute position of the next one)."""
        return self.self_caches[0].pos


def shift_right(labels: Tensor, decoder_start_token_id: int, pad_token_id: int) -> Tensor:
    """Teacher forcing inputs ``[start, y_0, ..., y_{T-2}]`` from labels ``(B, T)``; ignored
    labels (``-100``) become ``pad_token_id``."""
    out = labels.new_full(labels.shape, decoder_start_token_id)
    out[..., 1:] = labels[..., :-1]
    return out.masked_fill(out == -100, pad_token_id)


def _key_mask(mask: Tensor | None, batch: int, length: int, name: str) -> Tensor | None:
    """``(B, L)`` 1/0 or bool -> bool ``(B, 1, 1, L)`` (True = may attend)."""
    if mask is None:
        return None
    if mask.shape != (batch, length):
        raise ValueError(f"{name} must have shape (B, L) = {(batch, length)}, "
                         f"got {tuple(mask.shape)}")
    return mask.bool()[:, None, None, :]


class Seq2SeqLM(nn.Module):
    """Encoder–decoder Transformer with an LM head (see the module docstring).

    Parameters: ``embed`` (shared by encoder, decoder and — tied — the head), ``encoder`` /
    ``decoder`` (:class:`TransformerStack`), ``encoder_bias`` / ``decoder_bias``
    (:class:`RelativePositionBias`, relative positions only; bidirectional / causal),
    ``lm_head`` (untied only).
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d)
        # T5 initialises the shared table N(0, 1); scaled-by-√d inputs want N(0, 1/d).
        std = d ** -0.5 if cfg.scale_embeddings == "input" else 1.0
        nn.init.normal_(self.embed.weight, std=std)
        self.positions = SinusoidalPositions(d) if cfg.position == "sinusoidal" else None
        self.encoder_bias = self.decoder_bias = None
        if cfg.position == "relative":
            rel = dict(num_buckets=cfg.relative_num_buckets, max_distance=cfg.relative_max_distance)
            self.encoder_bias = RelativePositionBias(cfg.n_heads, bidirectional=True, **rel)
            self.decoder_bias = RelativePositionBias(cfg.n_heads, bidirectional=False, **rel)
        pre = cfg.norm_position == "pre"
        self.encoder = TransformerStack(cfg.block(cross_attention=False), cfg.n_layers,
                                        final_norm=pre)
        self.decoder = TransformerStack(cfg.block(cross_attention=True), cfg.n_decoder_layers,
                                        final_norm=pre)
        if cfg.activation == "geglu":
            for layer in [*self.encoder.layers, *self.decoder.layers]:
                layer.ffn = GatedGeluFeedForward(d, cfg.d_ff, bias=cfg.bias, dropout=cfg.dropout)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(d, cfg.vocab_size, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    # ---- pieces ---------------------------------------------------------------------------
    def _embed(self, ids: Tensor, start: int = 0, name: str = "input_ids") -> Tensor:
        """``(B, L)`` ids -> ``dropout(E[ids]·s + PE[start:start+L])``, ``(B, L, d_model)``."""
        nonempty_ids(name, ids)
        if host_check_is_free(ids, training=self.training):
            token_ids(ids, self.config.vocab_size, name=name)
        x = self.embed(ids)
        if self.config.scale_embeddings == "input":
            x = x * math.sqrt(self.config.d_model)
        if self.positions is not None:
            pos = position_range(start, ids.shape[1], ids.device)  # no host sync
            x = x + self.positions(pos).to(x.dtype)
        return self.drop(x)

    def _stack_out(self, out: StackOutput) -> StackOutput:
        if self.config.norm_position == "pre":  # T5: dropout after the final norm
            out.hidden = self.drop(out.hidden)
        return out

    def logits(self, hidden: Tensor) -> Tensor:
        """``(B, L, d_model) -> (B, L, vocab)``: ``h W_E^T`` (tied) or ``lm_head(h)``, after the
        ``d_model^-0.5`` rescaling when ``scale_embeddings == "output"``."""
        if self.config.scale_embeddings == "output":
            hidden = hidden * self.config.d_model ** -0.5
        w = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, w)

    # ---- encoder / decoder ----------------------------------------------------------------
    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
               return_weights: bool = False, output_hidden_states: bool = False) -> StackOutput:
        """Bidirectional encoder: ``input_ids (B, Ls)`` -> :class:`StackOutput` with ``hidden
        (B, Ls, d_model)``; padded keys (``attention_mask == 0``) are never attended to."""
        B, L = input_ids.shape
        mod = self.encoder_bias.score_mod() if self.encoder_bias is not None else None
        out = self.encoder(self._embed(input_ids), mask=_key_mask(attention_mask, B, L,
                                                                  "attention_mask"),
                           score_mod=mod, return_weights=return_weights,
                           output_hidden_states=output_hidden_states)
        return self._stack_out(out)

    def decode(self, decoder_input_ids: Tensor, encoder_hidden: Tensor,
               attention_mask: Tensor | None = None, decoder_attention_mask: Tensor | None = None,
               *, state: DecoderState | None = None, return_weights: bool = False,
               output_hidden_states: bool = False) -> StackOutput:
        """Causal decoder over ``decoder_input_ids (B, Lt)`` attending to ``encoder_hidden
        (B, Ls, d_model)``. With ``state`` the tokens continue the cached prefix (caches are
        updated in place) and ``decoder_attention_mask``, if given, covers prefix + new tokens.
        """
        B, L = decoder_input_ids.shape
        start = 0 if state is None else state.pos
        Lk = start + L
        if encoder_hidden.dim() != 3 or encoder_hidden.shape[0] != B:
            raise ValueError(f"encoder_hidden must be (B={B}, Ls, d_model), got "
                             f"{tuple(encoder_hidden.shape)}")
        if state is not None:
            enc_mask = state.encoder_mask
        else:
            enc_mask = _key_mask(attention_mask, B, encoder_hidden.shape[1], "attention_mask")
        self_mask: masks.Mask | Tensor = masks.causal()
        if decoder_attention_mask is not None:
            km = _key_mask(decoder_attention_mask, B, Lk, "decoder_attention_mask")
            rows = torch.arange(start, Lk, device=km.device)[:, None]  # key coordinates
            self_mask = (torch.arange(Lk, device=km.device)[None, :] <= rows) & km
        mod = self.decoder_bias.score_mod() if self.decoder_bias is not None else None
        out = self.decoder(
            self._embed(decoder_input_ids, start, "decoder_input_ids"), mask=self_mask,
            context=encoder_hidden, context_mask=enc_mask, score_mod=mod,
            caches=None if state is None else state.self_caches,
            cross_caches=None if state is None else state.cross_caches,
            return_weights=return_weights, output_hidden_states=output_hidden_states)
        return self._stack_out(out)

    # ---- generation -----------------------------------------------------------------------
    def init_state(self, encoder_hidden: Tensor, attention_mask: Tensor | None = None, *,
                   max_len: int) -> DecoderState:
        """Empty caches for decoding up to ``max_len`` target tokens from ``encoder_hidden``."""
        B, Ls, _ = encoder_hidden.shape
        kw = dict(dtype=encoder_hidden.dtype, device=encoder_hidden.device)
        return DecoderState(
            encoder_hidden=encoder_hidden,
            encoder_mask=_key_mask(attention_mask, B, Ls, "attention_mask"),
            self_caches=[layer.attn.new_cache(B, max_len, **kw) for layer in self.decoder.layers],
            cross_caches=[layer.cross_attn.new_cache(B, Ls, **kw)
                          for layer in self.decoder.layers])

    def decode_step(self, decoder_input_ids: Tensor, state: DecoderState, *,
                    decoder_attention_mask: Tensor | None = None,
                    return_weights: bool = False) -> Seq2SeqOutput:
        """Feed the next ``(B, L)`` target tokens (usually ``L = 1``); returns their logits
        ``(B, L, vocab)`` and updates ``state``. Cross-attention reuses the cached projections."""
        out = self.decode(decoder_input_ids, state.encoder_hidden,
                          decoder_attention_mask=decoder_attention_mask, state=state,
                          return_weights=return_weights)
        return Seq2SeqOutput(logits=self.logits(out.hidden), decoder_attentions=out.attentions,
                             cross_attentions=out.cross_attentions)

    # ---- full forward ---------------------------------------------------------------------
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                decoder_input_ids: Tensor | None = None,
                decoder_attention_mask: Tensor | None = None, labels: Tensor | None = None, *,
                return_weights: bool = False, output_hidden_states: bool = False
                ) -> Seq2SeqOutput:
        """Teacher-forced pass. ``labels (B, Lt)`` (``-100`` = ignored) give the mean token
        cross-entropy ``loss``; without ``decoder_input_ids`` they are ``shift_right(labels)``.
        """
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels (to shift right)")
            decoder_input_ids = shift_right(labels, self.config.decoder_start_token_id,
                                            self.config.pad_token_id)
        if input_ids.dim() != 2 or decoder_input_ids.dim() != 2 or \
                input_ids.shape[0] != decoder_input_ids.shape[0]:
            raise ValueError(f"input_ids (B, Ls) and decoder_input_ids (B, Lt) must share B, got "
                             f"{tuple(input_ids.shape)} and {tuple(decoder_input_ids.shape)}")
        enc = self.encode(input_ids, attention_mask, return_weights=return_weights,
                          output_hidden_states=output_hidden_states)
        dec = self.decode(decoder_input_ids, enc.hidden, attention_mask, decoder_attention_mask,
                          return_weights=return_weights,
                          output_hidden_states=output_hidden_states)
        logits = self.logits(dec.hidden)
        loss = None
        if labels is not None:
            if labels.shape != decoder_input_ids.shape:
                raise ValueError(f"labels {tuple(labels.shape)} must match decoder_input_ids "
                                 f"{tuple(decoder_input_ids.shape)}")
            if host_check_is_free(labels, training=self.training):
                token_ids(labels, self.config.vocab_size, name="labels", ignore=-100)
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                   ignore_index=-100)
        return Seq2SeqOutput(
            logits=logits, loss=loss, encoder_hidden=enc.hidden,
            encoder_hidden_states=enc.hidden_states, decoder_hidden_states=dec.hidden_states,
            encoder_attentions=enc.attentions, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
