"""Autoregressive generation: greedy / sampling for :class:`CausalLM` and :class:`Seq2SeqLM`,
beam search for :class:`Seq2SeqLM`, streaming to a terminal.

Decoder-only (:func:`generate`)::

    prefill   logits = model(prompt, attention_mask, caches)    every prompt token, once
    step t    x_t ~ p(· | prompt, x_<t)                          greedy or sampled
              logits = model(x_t, attention_mask, caches)        one token, O(1) projections

Prompts of different lengths are LEFT-padded (``pad_token_id``) with an attention mask; the
model takes positions from ``cumsum(mask) - 1`` so every prompt sees the positions it would
see alone. Each row stops on its own (EOS, stop string, ``max_new_tokens``); a finished row
keeps being fed ``pad_token_id`` with mask 0 (its logits are ignored) until every row is done.
``use_cache=False`` recomputes the whole sequence every step: the reference the cached paths
must reproduce token for token. The cached path is :class:`~attnkit.decoding.StaticDecoder`
(fixed-shape steps, optionally compiled) where it supports the model, else the model's own
forward with its caches (``GenerationConfig(static_cache=False)`` forces the latter).

A masked LM fills in instead (:func:`fill_mask`): every mask token of the input gets the
model's choice for its position from one forward pass — the most likely token when greedy
(the first answer of ``transformers``' ``pipeline("fill-mask")``), else a sample.

Beam search (:func:`beam_search`) follows Hugging Face's ``_beam_search`` (transformers 4.5x /
5.x): ``2·num_beams`` candidates per step, a candidate ending in EOS becomes a finished
hypothesis only if it ranks among the top ``num_beams``, finished scores are
``Σ log p / len^length_penalty`` with ``len`` the generated tokens EOS included (HF's
convention, not GNMT's ``((5 + len) / 6)^α``), and ``early_stopping=True`` stops once
``num_beams`` hypotheses are finished.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit import decoding
from attnkit.models.bert import BertForMaskedLM
from attnkit.models.causal_lm import CausalLM
from attnkit.models.seq2seq import Seq2SeqLM
from attnkit.positions import LearnedPositions
from attnkit.sampling import GenerationConfig, eos_ids, make_generator, select_next_token
from attnkit.validate import nonempty_ids, number, positive_int

__all__ = ["GenerationConfig", "generate", "generate_seq2seq", "fill_mask", "beam_search",
           "BeamSearchOutput", "reorder_caches", "stream_to_terminal", "TerminalStreamer",
           "left_pad"]

StreamFn = Callable[[int, list[int]], None]
DecodeFn = Callable[[list[int]], str]


# ---- helpers --------------------------------------------------------------------------------


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int = 0,
             device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Token lists -> ``ids (B, L)`` left-padded with ``pad_token_id`` and a bool ``mask
    (B, L)`` (True = real token), ``L`` the longest prompt."""
    if not prompts:
        raise ValueError("input_ids is an empty list: give at least one prompt")
    empty = [i for i, p in enumerate(prompts) if len(p) == 0]
    if empty:
        raise ValueError(f"prompt {empty[0]} of {len(prompts)} is empty: every prompt needs at "
                         "least one token (e.g. a BOS / end-of-document id to start from)")
    n = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), n), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(prompts), n, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        ids[i, n - len(p):] = torch.as_tensor(list(p), dtype=torch.long, device=device)
        mask[i, n - len(p):] = True
    return ids, mask


def reorder_caches(caches: Sequence, indices: Tensor) -> None:
    """Make row ``i`` of every cache a copy of row ``indices[i]`` (beam search).

    Works for :class:`~attnkit.attention.cache.KVCache` and ``SlidingWindowCache`` alike:
    their only per-row state is the ``k`` / ``v`` buffers ``(B, Hkv, slots, D)``; ``pos`` is
    shared by all rows.
    """
    for c in caches:
        c.k = c.k.index_select(0, indices.to(c.k.device))
        c.v = c.v.index_select(0, indices.to(c.v.device))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_ids_fit(cfg: GenerationConfig, vocab_size: int, default_eos: Any = None) -> None:
    """``pad_token_id`` and the EOS ids are ids of the model's vocabulary."""
    for name, ids in (("pad_token_id", (cfg.pad_token_id,)),
                      ("eos_token_id", eos_ids(cfg.eos_token_id, default_eos))):
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(f"{name}={bad[0]} is outside the model's vocabulary (valid ids: "
                             f"0..{vocab_size - 1})")


class _eval_mode:
    """Temporarily put a module in eval mode (no dropout while generating)."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


class _Rows:
    """Per-row bookkeeping: generated tokens, finished flags, EOS / stop strings / streaming."""

    def __init__(self, batch: int, max_new_tokens: int, eos: tuple[int, ...],
                 stop_strings: tuple[str, ...], stream: StreamFn | None,
                 decode: DecodeFn | None):
        if stop_strings and decode is None:
            raise ValueError("stop_strings need a decode function (token ids -> text)")
        self.out: list[list[int]] = [[] for _ in range(batch)]
        self.finished = [False] * batch
        self.max_new_tokens, self.eos, self.stop = max_new_tokens, set(eos), stop_strings
        self.stream, self.decode = stream, decode

    def push(self, tokens: list[int]) -> None:
        """Append this step's token to every unfinished row; mark rows that are now done."""
        for i, t in enumerate(tokens):
            if self.finished[i]:
                continue
            row = self.out[i]
            row.append(t)
            if self.stream is not None:
                self.stream(i, [t])
            if (t in self.eos or len(row) >= self.max_new_tokens
                    or (self.stop and any(s in self.decode(row) for s in self.stop))):
                self.finished[i] = True

    def active(self, device: torch.device) -> Tensor:
        return ~torch.tensor(self.finished, dtype=torch.bool, device=device)

    @property
    def done(self) -> bool:
        return all(self.finished)

    def sample(self, logits: Tensor, cfg: GenerationConfig, seen: Tensor | None,
               gen: torch.Generator | None, pad_id: int) -> Tensor | None:
        """One decoding step from ``logits (B, V)``: the next token of every row (``pad_id``
        for finished rows), pushed and marked in ``seen``; None once every row is done."""
        active = self.active(logits.device)
        # a finished row may attend to padding only (NaN logits): never let it sample
        logits = torch.where(active[:, None], logits.float(), 0.0)
        nxt = torch.where(active, select_next_token(logits, cfg, seen, gen), pad_id)
        self.push(nxt.tolist())
        if self.done:
            return None
        if seen is not None:
            seen[torch.arange(len(self.out), device=logits.device), nxt] |= active
        return nxt


# ---- decoder-only ---------------------------------------------------------------------------


@torch.no_grad()
def generate(model: CausalLM, input_ids: Tensor | Sequence[Sequence[int]],
             config: GenerationConfig | None = None, *, attention_mask: Tensor | None = None,
             stream: StreamFn | None = None, decode: DecodeFn | None = None) -> list[list[int]]:
    """Continue each prompt; returns the new tokens per prompt (the stopping EOS included).

    Args:
        input_ids: ``(B, L)`` tensor (optionally left-padded, with ``attention_mask``) or a
            list of token lists of any lengths (left-padded here).
        stream: called as ``stream(row, [token])`` for each row that got a token this step.
        decode: token ids -> text; needed for ``config.stop_strings`` (checked on the
            generated text only).
    """
    cfg = config or GenerationConfig()
    if cfg.num_beams != 1:
        raise ValueError("beam search is implemented for Seq2SeqLM (beam_search); "
                         "generate() decodes one hypothesis per prompt (num_beams=1)")
    dev = _device(model)
    _check_ids_fit(cfg, model.config.vocab_size)
    if isinstance(input_ids, Tensor):
        ids = nonempty_ids("input_ids", input_ids).to(dev)
        mask = (torch.ones_like(ids, dtype=torch.bool) if attention_mask is None
                else attention_mask.to(dev).bool())
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask {tuple(mask.shape)} must match input_ids "
                             f"{tuple(ids.shape)}")
    else:
        ids, mask = left_pad(input_ids, cfg.pad_token_id, dev)
    B, L = ids.shape
    N = cfg.max_new_tokens
    if isinstance(model.pos_emb, LearnedPositions):
        last = int(mask.sum(-1).max()) + N - 2  # position of the last token ever fed
        if last >= model.pos_emb.max_len:
            raise ValueError(f"prompt + max_new_tokens needs position {last}, beyond the "
                             f"model's max_seq_len={model.pos_emb.max_len}")
    rows = _Rows(B, N, eos_ids(cfg.eos_token_id), cfg.stop_strings, stream, decode)
    gen = make_generator(cfg.seed, dev)
    seen = None
    if cfg.repetition_penalty != 1.0:
        # tokens of the prompt (padding excluded); amax: a pad slot must not clear a real one
        seen = torch.zeros(B, model.config.vocab_size, dtype=torch.long, device=dev
                           ).scatter_reduce(1, ids, mask.long(), reduce="amax").bool()

    with _eval_mode(model):
        static = None
        if cfg.use_cache and cfg.static_cache and decoding.supports(model) is None:
            static = decoding.StaticDecoder(model, B, L + N, compile=cfg.compile)
        caches = model.new_caches(B, L + N) if cfg.use_cache and static is None else None
        step_ids, feed = ids, mask[:, -1]
        for i in range(N):
            if static is not None:
                logits = static.prefill(ids, mask) if i == 0 else static.step(step_ids, feed)
            elif caches is not None:
                logits = model(step_ids[:, None] if i else step_ids, attention_mask=mask,
                               caches=caches).logits[:, -1]
            else:
                logits = model(ids, attention_mask=mask).logits[:, -1]
            nxt = rows.sample(logits, cfg, seen, gen, cfg.pad_token_id)
            if nxt is None:
                break
            feed = rows.active(dev)  # rows that go on: feed their token; others pad, masked
            step_ids = torch.where(feed, nxt, cfg.pad_token_id)  # (B,)
            if static is None:
                ids = torch.cat([ids, step_ids[:, None]], dim=1)
                mask = torch.cat([mask, feed[:, None]], dim=1)
    return rows.out


# ---- encoder-decoder ------------------------------------------------------------------------


@torch.no_grad()
def generate_seq2seq(model: Seq2SeqLM, input_ids: Tensor, attention_mask: Tensor | None = None,
                     config: GenerationConfig | None = None, *, stream: StreamFn | None = None,
                     decode: DecodeFn | None = None) -> list[list[int]]:
    """Greedy / sampled decoding from ``decoder_start_token_id`` with the decoder caches
    (self-attention K/V grow per token; cross-attention K/V are projected once). Returns the
    new tokens per input (the stopping EOS included). ``config.eos_token_id=None`` uses the
    model's; ``num_beams > 1`` runs :func:`beam_search` (``stream`` / ``stop_strings`` are not
    supported there). A finished row keeps being fed padding: the decoder is causal, so that
    changes nothing for its earlier tokens and nothing for other rows.
    """
    cfg = config or GenerationConfig()
    mc = model.config
    eos = eos_ids(cfg.eos_token_id, mc.eos_token_id)
    if cfg.num_beams > 1:
        if stream is not None or cfg.stop_strings:
            raise ValueError("beam search supports neither stream nor stop_strings")
        return beam_search(model, input_ids, attention_mask, num_beams=cfg.num_beams,
                           max_new_tokens=cfg.max_new_tokens, length_penalty=cfg.length_penalty,
                           eos_token_id=eos, early_stopping=cfg.early_stopping).sequences
    dev = _device(model)
    _check_ids_fit(cfg, mc.vocab_size, mc.eos_token_id)
    input_ids = nonempty_ids("input_ids", input_ids).to(dev)
    attention_mask = None if attention_mask is None else attention_mask.to(dev)
    B, N = input_ids.shape[0], cfg.max_new_tokens
    rows = _Rows(B, N, eos, cfg.stop_strings, stream, decode)
    gen = make_generator(cfg.seed, dev)
    dec = torch.full((B, 1), mc.decoder_start_token_id, dtype=torch.long, device=dev)
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros(B, mc.vocab_size, dtype=torch.bool, device=dev)
        seen[:, mc.decoder_start_token_id] = True
    with _eval_mode(model):
        state = None
        if cfg.use_cache:
            enc = model.encode(input_ids, attention_mask).hidden
            state = model.init_state(enc, attention_mask, max_len=N)
        for _ in range(N):
            if state is not None:
                logits = model.decode_step(dec[:, -1:], state).logits[:, -1]
            else:
                logits = model(input_ids, attention_mask, dec).logits[:, -1]
            nxt = rows.sample(logits, cfg, seen, gen, mc.pad_token_id)
            if nxt is None:
                break
            dec = torch.cat([dec, nxt[:, None]], dim=1)
    return rows.out


# ---- masked LM ------------------------------------------------------------------------------


@torch.no_grad()
def fill_mask(model: BertForMaskedLM, input_ids: Tensor, mask_token_id: int,
              config: GenerationConfig | None = None, *, attention_mask: Tensor | None = None
              ) -> Tensor:
    """``input_ids (B, L)`` with every ``mask_token_id`` replaced by the model's choice for
    its position, all from one forward pass (the masks are filled independently): the argmax
    of the logits (``temperature == 0``) or a sample from the processed distribution
    (temperature, top-k, top-p, min-p, ``seed``; a repetition penalty counts the input's
    tokens). Returns a new ``(B, L)`` tensor."""
    cfg = config or GenerationConfig()
    if cfg.num_beams != 1:
        raise ValueError("fill_mask picks one token per mask (num_beams=1)")
    dev = _device(model)
    ids = input_ids.to(dev)
    if ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, L), got {tuple(ids.shape)}")
    where = ids == mask_token_id  # (B, L)
    if not bool(where.any()):
        raise ValueError(f"no mask token (id {mask_token_id}) in input_ids: nothing to fill")
    with _eval_mode(model):
        logits = model(ids, None if attention_mask is None else attention_mask.to(dev)).logits
    rows = where.nonzero()[:, 0]  # the row of each mask, (M,)
    seen = ids[rows] if cfg.repetition_penalty != 1.0 else None
    picked = select_next_token(logits[where], cfg, seen, make_generator(cfg.seed, dev))
    out = ids.clone()
    out[where] = picked
    return out


@dataclass
class BeamSearchOutput:
    """Best hypothesis per input: its new tokens (EOS included when it ended on one) and its
    score ``Σ log p(y_t | y_<t, x) / len^length_penalty`` (``len = len(tokens)``)."""

    sequences: list[list[int]]
    scores: list[float]
    # every finished hypothesis per input, best first: (score, tokens)
    hypotheses: list[list[tuple[float, list[int]]]] = field(default_factory=list)


@torch.no_grad()
def beam_search(model: Seq2SeqLM, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                num_beams: int = 4, max_new_tokens: int = 32, length_penalty: float = 1.0,
                eos_token_id: int | Sequence[int] | None = None,
                early_stopping: bool = True) -> BeamSearchOutput:
    """Beam search over the decoder of ``model`` (HF ``generate(num_beams=..., do_sample=False)``
    semantics, see the module docstring).

    Per step, with running beams ``y^(1..K)`` and cumulative log-probs ``s_k``:

    1. candidates ``s_k + log p(v | y^(k), x)`` over all ``K·V`` (beam, token) pairs; keep the
       best ``max(2, 1 + n_eos)·K`` (at step 0 only beam 1 is live, the others start at -1e9);
    2. a candidate that ends in EOS (or reaches ``max_new_tokens``) and ranks in the top ``K``
       becomes a finished hypothesis with score ``s / len^length_penalty``; the ``K`` best
       finished hypotheses are kept;
    3. the ``K`` best candidates that did not finish become the next beams; the decoder's
       self-attention caches are reordered by their source beam (:func:`reorder_caches`);
    4. an input is done when ``K`` hypotheses are finished (``early_stopping=True``) or, with
       ``early_stopping=False``, when the best running ``s / len^α`` cannot beat the worst
       finished one (HF's heuristic).

    ``eos_token_id=None`` uses ``model.config.eos_token_id``; ``()`` means no EOS (every
    hypothesis has ``max_new_tokens`` tokens).
    """
    positive_int("num_beams", num_beams)
    positive_int("max_new_tokens", max_new_tokens)
    number("length_penalty", length_penalty)
    mc, dev, K, N = model.config, _device(model), num_beams, max_new_tokens
    eos = eos_ids(eos_token_id, mc.eos_token_id)
    bad = [e for e in eos if not 0 <= e < mc.vocab_size]
    if bad:
        raise ValueError(f"eos_token_id={bad[0]} is outside the model's vocabulary (valid ids: "
                         f"0..{mc.vocab_size - 1})")
    eos_t = torch.tensor(eos, dtype=torch.long, device=dev)
    input_ids = nonempty_ids("input_ids", input_ids).to(dev)
    B, V = input_ids.shape[0], mc.vocab_size
    n_keep = min(max(2, 1 + len(eos)) * K, K * V)
    with _eval_mode(model):
        enc = model.encode(input_ids, attention_mask).hidden.repeat_interleave(K, 0)
        am = None if attention_mask is None else attention_mask.to(dev).repeat_interleave(K, 0)
        state = model.init_state(enc, am, max_len=N)
        tokens = torch.full((B * K, 1), mc.decoder_start_token_id, dtype=torch.long, device=dev)
        hist = torch.zeros(B, K, 0, dtype=torch.long, device=dev)  # running beams' tokens
        run = torch.zeros(B, K, device=dev)
        run[:, 1:] = -1e9
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        done = [False] * B
        for t in range(N):
            logp = F.log_softmax(model.decode_step(tokens, state).logits[:, -1].float(), -1)
            cand = (logp.view(B, K, V) + run[..., None]).view(B, K * V)
            top, idx = cand.topk(n_keep, dim=-1)  # sorted, best first
            beam, tok = idx // V, idx % V
            hits = torch.isin(tok, eos_t) if t < N - 1 else torch.ones_like(tok, dtype=torch.bool)
            gen_len = t + 1
            for b in range(B):
                if done[b]:
                    continue
                for r in range(K):  # only the top-K candidates may finish
                    if hits[b, r]:
                        seq = hist[b, beam[b, r]].tolist() + [int(tok[b, r])]
                        finished[b].append((float(top[b, r]) / gen_len ** length_penalty, seq))
                finished[b].sort(key=lambda h: -h[0])
                del finished[b][K:]
            alive = top + hits.float() * -1e9  # HF: finished candidates cannot continue
            run, sel = alive.topk(K, dim=-1)
            src = beam.gather(1, sel)
            hist = torch.cat([hist.gather(1, src[..., None].expand(-1, -1, t)),
                              tok.gather(1, sel)[..., None]], dim=2)
            reorder_caches(state.self_caches,
                           (torch.arange(B, device=dev)[:, None] * K + src).view(-1))
            tokens = hist[:, :, -1].reshape(B * K, 1)
            for b in range(B):
                if done[b] or len(finished[b]) < K:
                    continue
                done[b] = early_stopping or float(run[b, 0]) / gen_len ** length_penalty <= \
                    finished[b][-1][0]
            if all(done):
                break
    return BeamSearchOutput(sequences=[f[0][1] for f in finished],
                            scores=[f[0][0] for f in finished], hypotheses=finished)


# ---- streaming ------------------------------------------------------------------------------


class TerminalStreamer:
    """A ``stream`` callback printing the text of one row (``row``, default 0) as it grows.

    BPE pieces and multi-byte characters: a token need not decode to whole characters (a
    byte-level BPE may split "€" over tokens), so each call decodes the **whole generated
    suffix** and prints only the characters beyond those already printed; trailing U+FFFD
    (an incomplete UTF-8 sequence) is held back until the following tokens complete it.
    Call :meth:`end` after generation to print what is left and a newline.
    """

    def __init__(self, decode: DecodeFn, *, row: int = 0, file: TextIO | None = None):
        self.decode, self.row, self.file = decode, row, file
        self.ids: list[int] = []
        self.printed = 0  # characters written so far
        self.text = ""

    def _write(self, text: str) -> None:
        new = text[self.printed:]
        if new:
            out = self.file if self.file is not None else sys.stdout
            out.write(new)
            out.flush()
            self.printed = len(text)

    def __call__(self, row: int, tokens: list[int]) -> None:
        if row != self.row:
            return
        self.ids.extend(tokens)
        self.text = self.decode(self.ids)
        self._write(self.text.rstrip("\ufffd"))

    def end(self) -> None:
        self._write(self.text)
        out = self.file if self.file is not None else sys.stdout
        out.write("\n")
        out.flush()


def stream_to_terminal(tokenizer_decode: DecodeFn, *, row: int = 0,
                       file: TextIO | None = None) -> TerminalStreamer:
    """``generate(..., stream=stream_to_terminal(tok.decode))`` prints row ``row``'s text
    incrementally (to ``file``, default stdout); see :class:`TerminalStreamer`."""
    return TerminalStreamer(tokenizer_decode, row=row, file=file)
