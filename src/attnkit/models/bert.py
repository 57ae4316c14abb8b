"""BERT (Devlin et al. 2019): a post-norm Transformer encoder with learned absolute positions.

    h0 = Dropout(LayerNorm(E_word[x] + E_pos[i] + E_type[t]))
    h  = TransformerStack(post-norm blocks)(h0, mask = padding(attention_mask))
    pooled = tanh(W h[:, 0] + b)                          (the [CLS] "pooler")

Heads: masked LM (dense + act + LayerNorm, decoder tied to the word embeddings), sequence
classification (on the pooled [CLS]), token classification and extractive QA (start/end
logits). Layer layout and numerics match Hugging Face ``transformers`` BERT, so checkpoints
convert with :mod:`attnkit.interop.bert`. Shapes: ``B`` batch, ``L`` length, ``d`` = d_model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.attention.masks import Mask, padding
from attnkit.layers import BlockConfig, LayerNorm
from attnkit.models.config import ModelConfig
from attnkit.models.stacks import TransformerStack
from attnkit.positions import LearnedPositions
from attnkit.validate import host_check_is_free, nonempty_ids, nonneg_int, positive_int, token_ids

__all__ = [
    "BertConfig", "BertOutput", "HeadOutput", "QAOutput", "BertEmbeddings", "BertModel",
    "BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification",
    "BertForQuestionAnswering", "mean_pool", "best_span",
]


@dataclass
class BertConfig(ModelConfig):
    """BERT hyper-parameters (defaults: ``bert-base``). ``activation`` "gelu" is the exact
    erf GELU of the original BERT; ``backend`` is the attention backend ("auto", "sdpa", ...)."""

    family: ClassVar[str] = "bert"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "bert-base": {},
        "bert-tiny": dict(d_model=128, n_layers=2, n_heads=2, d_ff=512),
        "minilm-l6": dict(d_model=384, n_layers=6, n_heads=12, d_ff=1536),  # all-MiniLM-L6-v2
    }

    vocab_size: int = 30522
    max_position: int = 512
    type_vocab_size: int = 2
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    activation: str = "gelu"
    norm_eps: float = 1e-12
    dropout: float = 0.1
    attn_dropout: float = 0.1
    pad_token_id: int = 0
    num_labels: int = 2
    backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_position", "type_vocab_size", "n_layers"):
            positive_int(name, getattr(self, name))
        nonneg_int("num_labels", self.num_labels)
        self.block()  # d_model / n_heads, d_ff, dropouts, norm_eps, backend
        if self.activation not in ("gelu", "gelu_tanh", "relu"):
            raise ValueError(f"unknown BERT activation {self.activation!r}; valid: 'gelu', "
                             f"'gelu_tanh', 'relu'")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} outside vocab "
                             f"(size {self.vocab_size})")

    def block(self) -> BlockConfig:
        """The post-norm block every layer uses."""
        return BlockConfig(
            d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff,
            activation=self.activation, norm="layernorm", norm_eps=self.norm_eps,
            norm_position="post", dropout=self.dropout, attn_dropout=self.attn_dropout,
            backend=self.backend)


# ---- outputs -------------------------------------------------------------------------------


@dataclass
class BertOutput:
    """Encoder output. ``hidden_states``: embedding output + every layer's output (n+1)."""

    last_hidden_state: Tensor  # (B, L, d)
    pooler_output: Tensor | None = None  # (B, d)
    hidden_states: list[Tensor] = field(default_factory=list)  # n_layers+1 × (B, L, d)
    attentions: list[Tensor] = field(default_factory=list)  # n_layers × (B, H, L, L)


@dataclass
class HeadOutput:
    """A head's logits (``(B, V)``/``(B, num_labels)``/``(B, L, ·)``) and optional loss."""

    logits: Tensor
    loss: Tensor | None = None
    hidden_states: list[Tensor] = field(default_factory=list)
    attentions: list[Tensor] = field(default_factory=list)


@dataclass
class QAOutput:
    """Extractive QA: span start/end logits ``(B, L)`` and the mean start/end loss."""

    start_logits: Tensor
    end_logits: Tensor
    loss: Tensor | None = None
    hidden_states: list[Tensor] = field(default_factory=list)
    attentions: list[Tensor] = field(default_factory=list)


# ---- helpers -------------------------------------------------------------------------------


def mean_pool(hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Mean of ``hidden (B, L, d)`` over the positions where ``attention_mask (B, L)`` is
    non-zero -> ``(B, d)`` (sentence-transformers' mean pooling)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def best_span(start_logits: Tensor, end_logits: Tensor, max_answer_len: int = 30,
              mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Highest-scoring span ``start <= end < start + max_answer_len`` per example.

    ``start_logits``/``end_logits`` ``(B, L)`` (or ``(L,)``); ``mask (B, L)`` True where a
    position may be part of the answer (e.g. the context tokens). Score = start + end logit.
    Returns ``(start (B,), end (B,), score (B,))`` (scalars for 1-D input).
    """
    if max_answer_len < 1:
        raise ValueError(f"max_answer_len must be >= 1, got {max_answer_len}")
    if start_logits.shape != end_logits.shape:
        raise ValueError(f"start/end logits shapes differ: {tuple(start_logits.shape)} vs "
                         f"{tuple(end_logits.shape)}")
    squeeze = start_logits.dim() == 1
    s, e = (start_logits[None], end_logits[None]) if squeeze else (start_logits, end_logits)
    B, L = s.shape
    scores = s.float()[:, :, None] + e.float()[:, None, :]  # (B, L_start, L_end)
    i = torch.arange(L, device=s.device)
    ok = (i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < max_answer_len)  # (L, L)
    ok = ok[None].expand(B, L, L)
    if mask is not None:
        m = (mask[None] if squeeze else mask).bool()
        ok = ok & m[:, :, None] & m[:, None, :]
    scores = scores.masked_fill(~ok, float("-inf"))
    best, flat = scores.view(B, -1).max(dim=-1)
    start, end = flat // L, flat % L
    if squeeze:
        return start[0], end[0], best[0]
    return start, end, best


def _act(name: str, x: Tensor) -> Tensor:
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    return F.relu(x)


# ---- encoder -------------------------------------------------------------------------------


class BertEmbeddings(nn.Module):
    """``Dropout(LayerNorm(word + position + token type))``: ids ``(B, L)`` -> ``(B, L, d)``."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_token_id)
        self.position = LearnedPositions(cfg.max_position, cfg.d_model)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.norm = LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        L = input_ids.shape[1]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        h = self.word(input_ids) + self.token_type(token_type_ids) + self.position(L)
        return self.drop(self.norm(h))


class BertModel(nn.Module):
    """Embeddings -> post-norm encoder -> optional pooler ``tanh(W h_CLS + b)``."""

    def __init__(self, cfg: BertConfig, *, add_pooler: bool = True):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = TransformerStack(cfg.block(), cfg.n_layers, final_norm=False)
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model) if add_pooler else None
        self.apply(_init_weights)

    @staticmethod
    def attention_mask_to_mask(attention_mask: Tensor | None) -> Mask | None:
        """``(B, L)`` 1/True = real token -> a key-padding :class:`Mask` (None if no padding;
        that check is a host sync, so under ``torch.compile`` the mask is always built)."""
        if attention_mask is None:
            return None
        km = attention_mask.bool()
        if not torch.compiler.is_compiling() and bool(km.all()):
            return None
        return padding(key_mask=km)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, return_weights: bool = False,
                output_hidden_states: bool = False) -> BertOutput:
        """``input_ids (B, L)`` -> :class:`BertOutput`; ``attention_mask (B, L)`` 1 = token,
        0 = padding; ``token_type_ids (B, L)`` segment ids (default 0)."""
        nonempty_ids("input_ids", input_ids)
        if token_type_ids is not None and token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids shape {tuple(token_type_ids.shape)} != input_ids "
                             f"shape {tuple(input_ids.shape)}")
        if host_check_is_free(input_ids, training=self.training):
            cfg = self.config
            token_ids(input_ids, cfg.vocab_size)
            if token_type_ids is not None:
                token_ids(token_type_ids, cfg.type_vocab_size, name="token_type_ids",
                          size_name="type_vocab_size")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids "
                             f"shape {tuple(input_ids.shape)}")
        h = self.embeddings(input_ids, token_type_ids)
        st = self.encoder(h, mask=self.attention_mask_to_mask(attention_mask),
                          output_hidden_states=output_hidden_states,
                          return_weights=return_weights)
        pooled = torch.tanh(self.pooler(st.hidden[:, 0])) if self.pooler is not None else None
        return BertOutput(st.hidden, pooled, st.hidden_states, st.attentions)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights once); optionally without the embedding tables."""
        skip = ({id(p) for p in self.embeddings.parameters()} if exclude_embeddings else set())
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)


def _init_weights(m: nn.Module) -> None:
    """BERT init: N(0, 0.02) for Linear/Embedding, zero biases, unit LayerNorm."""
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
        if m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()


def _linear(d_in: int, d_out: int) -> nn.Linear:
    """A head's ``nn.Linear(d_in, d_out)`` with the BERT init."""
    layer = nn.Linear(d_in, d_out)
    _init_weights(layer)
    return layer


def _ce(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Cross-entropy over the last dim, ignoring label ``ignore_index``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=ignore_index)


class _BertHead(nn.Module):
    """A task head on an encoder ``self.bert``. ``forward`` encodes, then a subclass states
    only what differs: its layers, ``_logits`` and (if not cross-entropy) ``_loss``."""

    def __init__(self, cfg: BertConfig, *, add_pooler: bool = False):
        super().__init__()
        self.config = cfg
        self.bert = BertModel(cfg, add_pooler=add_pooler)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        skip = ({id(p) for p in self.bert.embeddings.parameters()}
                if exclude_embeddings else set())
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, return_weights: bool = False,
                output_hidden_states: bool = False,
                labels: Tensor | tuple[Tensor, Tensor] | None = None
                ) -> HeadOutput | QAOutput:
        """Inputs as :meth:`BertModel.forward`; ``labels`` as the head's docstring says (a
        loss only when given)."""
        o = self.bert(input_ids, attention_mask, token_type_ids, return_weights,
                      output_hidden_states)
        if labels is not None and host_check_is_free(input_ids, training=self.training):
            self._check_labels(labels)
        logits = self._logits(o)
        loss = self._loss(logits, labels) if labels is not None else None
        return self._output(logits, loss, o)

    def _logits(self, o: BertOutput) -> Tensor:
        raise NotImplementedError

    def _check_labels(self, labels: Any) -> None:
        """Class / token ids in ``labels`` within the head's range (a clear error instead of
        cross-entropy's bare "out of bounds")."""

    def _loss(self, logits: Tensor, labels: Any) -> Tensor:
        return _ce(logits, labels)

    def _output(self, logits: Tensor, loss: Tensor | None, o: BertOutput
                ) -> HeadOutput | QAOutput:
        return HeadOutput(logits, loss, o.hidden_states, o.attentions)


class BertForMaskedLM(_BertHead):
    """``logits (B, L, V) = LayerNorm(act(W h)) E_wordᵀ + b`` (decoder tied to embeddings).
    ``labels (B, L)``: target ids at masked positions, -100 elsewhere."""

    def __init__(self, cfg: BertConfig):
        super().__init__(cfg, add_pooler=False)
        self.transform = _linear(cfg.d_model, cfg.d_model)
        self.transform_norm = LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.decoder_bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def _check_labels(self, labels: Tensor) -> None:
        token_ids(labels, self.config.vocab_size, name="labels", ignore=-100)

    def _logits(self, o: BertOutput) -> Tensor:
        h = self.transform_norm(_act(self.config.activation, self.transform(o.last_hidden_state)))
        return F.linear(h, self.bert.embeddings.word.weight, self.decoder_bias)


class BertForSequenceClassification(_BertHead):
    """``logits (B, num_labels) = W Dropout(pooled) + b``; ``num_labels == 1`` is regression
    (MSE loss), otherwise cross-entropy. ``labels (B,)`` class ids (or float targets when
    ``num_labels == 1``)."""

    def __init__(self, cfg: BertConfig):
        super().__init__(cfg, add_pooler=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = _linear(cfg.d_model, cfg.num_labels)

    def _check_labels(self, labels: Tensor) -> None:
        if self.config.num_labels > 1:
            token_ids(labels, self.config.num_labels, name="labels", size_name="num_labels")

    def _logits(self, o: BertOutput) -> Tensor:
        return self.classifier(self.drop(o.pooler_output))

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.config.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
        return _ce(logits, labels)


class BertForTokenClassification(_BertHead):
    """Per-token ``logits (B, L, num_labels)`` (NER, POS tagging). ``labels (B, L)`` tag ids,
    -100 where ignored (padding, sub-word continuations)."""

    def __init__(self, cfg: BertConfig):
        super().__init__(cfg, add_pooler=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = _linear(cfg.d_model, cfg.num_labels)

    def _check_labels(self, labels: Tensor) -> None:
        token_ids(labels, self.config.num_labels, name="labels", ignore=-100,
                  size_name="num_labels")

    def _logits(self, o: BertOutput) -> Tensor:
        return self.classifier(self.drop(o.last_hidden_state))


class BertForQuestionAnswering(_BertHead):
    """Extractive QA: ``[start | end] logits = W h + b``, each ``(B, L)``. ``labels``:
    ``(start, end)`` positions, each ``(B,)``, or one ``(B, 2)`` tensor. Positions outside
    ``[0, L)`` are ignored (as in Hugging Face). Loss = mean of the start and end
    cross-entropies."""

    def __init__(self, cfg: BertConfig):
        super().__init__(cfg, add_pooler=False)
        self.qa_outputs = _linear(cfg.d_model, 2)

    def _logits(self, o: BertOutput) -> Tensor:
        return self.qa_outputs(o.last_hidden_state)  # (B, L, 2)

    def _loss(self, logits: Tensor, labels: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        start, end = logits.unbind(dim=-1)  # 2 × (B, L)
        sp, ep = labels.unbind(-1) if isinstance(labels, Tensor) else labels
        L = start.shape[1]
        return (_ce(start, sp.clamp(0, L), L) + _ce(end, ep.clamp(0, L), L)) / 2

    def _output(self, logits: Tensor, loss: Tensor | None, o: BertOutput) -> QAOutput:
        start, end = logits.unbind(dim=-1)  # 2 × (B, L)
        return QAOutput(start, end, loss, o.hidden_states, o.attentions)

    def best_span(self, out: QAOutput, max_answer_len: int = 30,
                  mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`best_span` over a forward's logits."""
        return best_span(out.start_logits, out.end_logits, max_answer_len, mask)
