"""Logits processors and next-token selection for :mod:`attnkit.generate`.

Each processor is a small pure function ``(logits (B, V), ...) -> logits (B, V)``; filtered
tokens get ``-inf`` so a following ``softmax`` gives them probability 0. The order used by
:func:`process_logits` is Hugging Face's::

    repetition penalty -> temperature -> top-k -> top-p -> min-p -> softmax -> sample

``temperature == 0`` means greedy: ``argmax`` of the (repetition-penalised) logits — top-k,
top-p and min-p never remove the most likely token, so they cannot change the argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnkit.validate import flag, nonneg_int, number, positive_int

__all__ = ["GenerationConfig", "apply_temperature", "top_k_filter", "top_p_filter",
           "min_p_filter", "repetition_penalty", "process_logits", "select_next_token",
           "make_generator"]


@dataclass
class GenerationConfig:
    """How :func:`~attnkit.generate.generate` / ``generate_seq2seq`` pick tokens.

    ``temperature == 0`` (default) is greedy decoding; ``> 0`` samples from
    ``softmax(processed logits / temperature)`` after the ``top_k`` / ``top_p`` / ``min_p``
    filters (``None`` = off). ``repetition_penalty`` (1.0 = off) is CTRL's (Keskar et al.
    2019), applied to every token already present (prompt + generated; for seq2seq the decoder
    tokens, start token included, as HF does).

    Stopping, per row: ``max_new_tokens`` tokens, a token of ``eos_token_id`` (an int or a
    sequence of ints; ``None`` = the model's default — ``Seq2SeqConfig.eos_token_id``, none
    for a ``CausalLM`` — and ``()`` = no EOS), or a generated text containing one of
    ``stop_strings`` (needs a ``decode`` function). The stopping token is part of the output.

    ``pad_token_id`` fills left-padded prompts and the rows that finished early (masked out).
    ``seed`` seeds a private ``torch.Generator`` (``None``: torch's global RNG).
    ``use_cache=False`` recomputes the whole sequence at every step (the reference path).
    ``static_cache`` (decoder-only models): decode with :class:`~attnkit.decoding.
    StaticDecoder` — fixed-shape steps over preallocated K/V buffers — where it supports the
    model (else, or with ``False``, the model's own forward with its caches); ``compile``
    runs that step through ``torch.compile`` (worth its compile time for long generations;
    on CPU with 4+ rows the eager step on MKL-packed weights is the faster one).
    ``num_beams > 1`` (seq2seq only, greedy only) runs :func:`~attnkit.generate.beam_search`
    with ``length_penalty`` and ``early_stopping`` (HF semantics).
    """

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    stop_strings: Sequence[str] = ()
    eos_token_id: int | Sequence[int] | None = None
    pad_token_id: int = 0
    seed: int | None = None
    use_cache: bool = True
    static_cache: bool = True
    compile: bool = False
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = True

    def __post_init__(self) -> None:
        positive_int("max_new_tokens", self.max_new_tokens)
        number("temperature (0 = greedy)", self.temperature, low=0.0)
        if self.top_k is not None:
            positive_int("top_k (None = off)", self.top_k)
        if self.top_p is not None:
            number("top_p (None = off)", self.top_p, low=0.0, high=1.0, low_open=True)
        if self.min_p is not None:
            number("min_p (None = off)", self.min_p, low=0.0, high=1.0)
        number("repetition_penalty (1 = off)", self.repetition_penalty, low=0.0, low_open=True)
        nonneg_int("pad_token_id", self.pad_token_id)
        if _bad_eos(self.eos_token_id):
            raise ValueError(f"eos_token_id must be None, an int or a sequence of ints, got "
                             f"{self.eos_token_id!r}")
        for e in eos_ids(self.eos_token_id):
            nonneg_int("eos_token_id", e)
        if self.seed is not None:
            nonneg_int("seed (None = random)", self.seed)
        if isinstance(self.stop_strings, str):
            self.stop_strings = (self.stop_strings,)
        self.stop_strings = tuple(self.stop_strings)
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
        positive_int("num_beams", self.num_beams)
        number("length_penalty", self.length_penalty)
        flag("use_cache", self.use_cache)
        flag("early_stopping", self.early_stopping)
        if self.num_beams > 1 and self.temperature > 0:
            raise ValueError("beam search is deterministic: use temperature=0 with num_beams > 1")

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


def _bad_eos(eos: Any) -> bool:
    """Not None, an int or a sequence of ints (then :func:`eos_ids` cannot read it)."""
    if eos is None or (isinstance(eos, int) and not isinstance(eos, bool)):
        return False
    return isinstance(eos, (str, bytes)) or not isinstance(eos, Sequence) or any(
        not isinstance(e, int) or isinstance(e, bool) for e in eos)


def eos_ids(eos: int | Sequence[int] | None, default: int | Sequence[int] | None = None
            ) -> tuple[int, ...]:
    """``eos_token_id`` as a tuple: ``None`` -> ``default``; an int -> ``(int,)``."""
    if eos is None:
        eos = default
    if eos is None:
        return ()
    return (int(eos),) if isinstance(eos, int) else tuple(int(e) for e in eos)


# ---- processors -----------------------------------------------------------------------------


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """``l_i / T`` (``T > 0``): ``T < 1`` sharpens ``softmax``, ``T > 1`` flattens it."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 here (0 = greedy is argmax), got {temperature}")
    return logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep exactly the ``k`` largest logits per row, the rest -> ``-inf``::

        l'_i = l_i if i ∈ topk(l, k) else -inf

    Ties at the k-th value are broken by :func:`torch.topk`, so exactly ``k`` survive.
    """
    if k >= logits.shape[-1]:
        return logits
    keep = torch.zeros_like(logits, dtype=torch.bool)
    keep.scatter_(-1, logits.topk(k, dim=-1).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter (Holtzman et al. 2020): with ``π`` the tokens sorted by probability,
    keep ``π_j`` iff ``Σ_{i<j} p_{π_i} < p``, i.e. the smallest prefix whose cumulative
    probability reaches ``p``; the most likely token is always kept. ``p >= 1`` keeps all."""
    if p >= 1:
        return logits
    probs, order = logits.float().softmax(-1).sort(-1, descending=True)
    before = probs.cumsum(-1) - probs  # Σ_{i<j} p_{π_i}
    keep_sorted = before < p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Min-p filter (Nguyen et al. 2024): keep token ``i`` iff ``p_i >= min_p · max_j p_j``
    (the scale of the cut follows the model's confidence; the top token always survives)."""
    probs = logits.float().softmax(-1)
    keep = probs >= min_p * probs.amax(-1, keepdim=True)
    return logits.masked_fill(~keep, float("-inf"))


def repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL repetition penalty (Keskar et al. 2019, as HF implements it) for seen tokens::

        l'_i = l_i / θ  if i seen and l_i > 0
        l'_i = l_i · θ  if i seen and l_i <= 0
        l'_i = l_i      otherwise

    ``θ > 1`` makes seen tokens less likely whatever their sign. ``seen``: a ``(B, V)`` bool
    mask, or ``(B, T)`` token ids (negative ids are ignored, e.g. padding marked -1).
    """
    if penalty == 1.0:
        return logits
    if seen.dtype != torch.bool:
        ids = seen.long()
        # amax: a padded (-1 -> 0) entry must not clear a real occurrence of token 0
        seen = torch.zeros(logits.shape, dtype=torch.long, device=logits.device).scatter_reduce(
            -1, ids.clamp(min=0), (ids >= 0).long(), reduce="amax").bool()
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def process_logits(logits: Tensor, config: GenerationConfig, seen: Tensor | None = None
                   ) -> Tensor:
    """All processors of ``config`` in HF's order (see the module docstring). Greedy
    (``temperature == 0``) applies only the repetition penalty."""
    if seen is not None and config.repetition_penalty != 1.0:
        logits = repetition_penalty(logits, seen, config.repetition_penalty)
    if not config.do_sample:
        return logits
    logits = apply_temperature(logits, config.temperature)
    if config.top_k is not None:
        logits = top_k_filter(logits, config.top_k)
    if config.top_p is not None:
        logits = top_p_filter(logits, config.top_p)
    if config.min_p is not None:
        logits = min_p_filter(logits, config.min_p)
    return logits


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (``None``: use the global RNG)."""
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def select_next_token(logits: Tensor, config: GenerationConfig, seen: Tensor | None = None,
                      generator: torch.Generator | None = None) -> Tensor:
    """``(B, V)`` logits -> ``(B,)`` token ids: argmax (greedy) or a sample from the
    processed distribution."""
    logits = process_logits(logits.float(), config, seen)
    if not config.do_sample:
        return logits.argmax(-1)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
