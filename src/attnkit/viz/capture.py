"""Capture the attention maps of any attnkit model in one forward pass.

::

    model, tok = load_for_viz("runs/tiny/best")
    cap = capture(model, tok, "The cat sat on the mat.", layers=[0, -1], heads=[0, 1])
    cap.weights["self"].shape          # (2 layers, 2 heads, L, L)
    cap.to_json()                      # what the explorer draws

How: the model runs once under ``torch.no_grad()`` in eval mode (its mode is restored after)
with ``return_weights=True``. A forward hook on every attention module
(:class:`~attnkit.attention.multihead.MultiHeadAttention` of every
:class:`~attnkit.models.stacks.TransformerStack` layer) copies the kept heads of the kept
layers as they are produced and hands ``None`` on instead of the weights, so the model never
holds the maps of all layers at once; a layer that is not kept is not asked for its weights
at all (a pre-hook), so it runs its fast attention path. The attention outputs themselves are
untouched, so the logits are those of a plain forward (up to the float rounding of the
weight-returning reference attention path, ~1e-6). Captures of one model from several
threads take turns (a per-model lock), since the hooks live on the shared modules.

Memory: the kept maps need ``layers · heads · Lq · Lk · 4`` bytes (summed over the kinds;
:func:`~attnkit.viz.sites.estimate_bytes`). Above ``memory_budget`` (default 512 MiB)
:func:`capture` raises a ``ValueError`` naming the ways out: fewer ``layers=``/``heads=``,
a smaller ``max_tokens=``, or ``to_disk=DIR``, which writes each layer's maps into a
memory-mapped ``.npy`` file as the hook sees them (then only one layer, ``heads · Lq · Lk · 4``
bytes, must fit the budget).

Inputs longer than ``max_tokens`` (or the model's position table) are truncated from the
right; the result says so in ``truncated`` / ``warnings``. With text input, BERT gets
``[CLS] … [SEP]``, an encoder–decoder model's source gets the tokenizer's end token and its
decoder input is ``[decoder_start] + decoder_text``, a causal LM gets a BOS distinct from EOS
(LLaMA's ``<s>``, not GPT-2's ``<|endoftext|>``); ``add_special_tokens=False`` turns this off.
"""

from __future__ import annotations

import operator
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attnkit.viz.result import SIDECAR, AttentionCapture, open_npy
from attnkit.viz.sites import (
    Selection,
    Site,
    attention_sites,
    estimate_bytes,
    lengths,
    model_info,
    plan,
)
from attnkit.viz.tokens import display_token, display_tokens, is_byte_level

__all__ = ["capture", "input_lengths", "estimate_bytes", "attention_sites", "model_info", "Site",
           "AttentionCapture", "DEFAULT_BUDGET"]

DEFAULT_BUDGET = 512 * 2**20
_MAX_KEPT_LOGITS = 1 << 22  # keep the logits tensor when it has at most this many elements
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock(model: nn.Module) -> threading.Lock:
    """The model's capture lock: concurrent captures (a server's threads) take turns."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.Lock())
def _ids(x: Any) -> list[int]:
    if isinstance(x, Tensor):
        if x.dim() == 2 and x.shape[0] == 1:
            x = x[0]
        if x.dim() != 1 or x.is_floating_point():
            raise ValueError(f"token ids must be an integer (L,) or (1, L) tensor, got "
                             f"{x.dtype} {tuple(x.shape)}")
        return [int(i) for i in x.tolist()]
    return [operator.index(i) for i in x]


def _truncate(ids: list[int], prefix: list[int], suffix: list[int], limit: int, what: str,
              notes: list[str]) -> tuple[list[int], bool]:
    room = max(limit - len(prefix) - len(suffix), 1)
    if len(ids) > room:
        notes.append(f"{what} truncated from {len(ids) + len(prefix) + len(suffix)} to "
                     f"{limit} tokens (max_tokens / the model's maximum length)")
        return prefix + ids[:room] + suffix, True
    return prefix + ids + suffix, False


def _model_limit(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("max_seq_len", "max_position"):
        if isinstance(getattr(cfg, name, None), int):
            return getattr(cfg, name)
    return None


def _predictions(model: nn.Module, out: Any, tokenizer: Any, ids: list[int], top_k: int
                 ) -> tuple[list[dict[str, Any]], Tensor | None]:
    """Top-k of the next token (causal / seq2seq), of each [MASK] (masked LM) or of the
    classes (classifiers)."""
    logits = getattr(out, "logits", None)
    if not isinstance(logits, Tensor) or top_k < 1:
        return [], None
    lg = logits[0].detach().float().cpu()
    kept = lg if lg.numel() <= _MAX_KEPT_LOGITS else None
    family, arch = model_info(model)["family"], type(model).__name__
    vocab = family in ("causal_lm", "seq2seq") or arch == "BertForMaskedLM"
    if lg.dim() == 1:
        rows = [(None, lg)]
    elif family in ("causal_lm", "seq2seq"):
        rows = [(lg.shape[0] - 1, lg[-1])]
    elif arch == "BertForMaskedLM" and tokenizer is not None and tokenizer.mask_id is not None:
        rows = [(i, lg[i]) for i, t in enumerate(ids) if t == tokenizer.mask_id]
    else:
        rows = []
    bl = is_byte_level(tokenizer)
    preds = []
    for pos, row in rows:
        p, idx = row.softmax(-1).topk(min(top_k, row.numel()))
        top = []
        for pi, ii in zip(p.tolist(), idx.tolist(), strict=True):
            name = (display_token(tokenizer.id_to_token(ii), bl)
                    if vocab and tokenizer is not None else f"label {ii}")
            top.append({"id": ii, "token": name, "prob": round(pi, 4)})
        preds.append({"position": pos, "top": top})
    return preds, kept


@dataclass
class _Inputs:
    """What the forward pass runs on, and its display strings."""

    ids: list[int]
    tokens: list[str]
    raw: list[str]
    n_orig: int
    text: str | None = None
    dec_ids: list[int] | None = None
    dec_text: str | None = None
    pixels: Tensor | None = None
    truncated: bool = False
    notes: list[str] = field(default_factory=list)


def _prepare(model: nn.Module, family: str, tok: Any, inp: Any, decoder_text: Any,
             max_tokens: int, add_special_tokens: bool) -> _Inputs:
    """Token ids (special tokens, truncation) or pixels, and the token strings."""
    if decoder_text is not None and family != "seq2seq":
        raise ValueError(f"decoder_text is for encoder–decoder models, not {family!r}")
    if family == "vit":
        if not isinstance(inp, Tensor):
            raise TypeError("a ViT takes pixel values: a (C, H, W) or (1, C, H, W) tensor")
        side = model.config.image_size // model.config.patch_size
        tokens = ["[CLS]"] + [f"p{r},{c}" for r in range(side) for c in range(side)]
        return _Inputs([], tokens, list(tokens), len(tokens),
                       pixels=inp if inp.dim() == 4 else inp[None])
    pre: list[int] = []
    suf: list[int] = []
    if isinstance(inp, str):
        if tok is None:
            raise ValueError("text input needs a tokenizer: capture(model, tokenizer, text)")
        body = tok.encode(inp)
        if add_special_tokens:
            if family == "bert" and tok.cls_id is not None and tok.sep_id is not None:
                pre, suf = [tok.cls_id], [tok.sep_id]
            elif family == "seq2seq" and tok.end_id is not None:
                suf = [tok.end_id]
            elif family == "causal_lm" and tok.bos_id is not None and tok.bos_id != tok.eos_id:
                pre = [tok.bos_id]
    else:
        body = _ids(inp)
    notes: list[str] = []
    limit = min(max_tokens, _model_limit(model) or max_tokens)
    ids, truncated = _truncate(body, pre, suf, limit, "input", notes)
    if not ids:
        raise ValueError("the input has no tokens")
    tokens, raw = display_tokens(ids, tok)
    res = _Inputs(ids, tokens, raw, len(body) + len(pre) + len(suf),
                  text=inp if isinstance(inp, str) else None, truncated=truncated, notes=notes)
    if family == "seq2seq":  # decoder input: [start] + text, or the given ids as they are
        start = [model.config.decoder_start_token_id]
        if isinstance(decoder_text, str):
            if tok is None:
                raise ValueError("decoder_text as text needs a tokenizer")
            res.dec_text, dbody = decoder_text, tok.encode(decoder_text)
        elif decoder_text is None:
            dbody = []
        else:
            start, dbody = [], _ids(decoder_text)
        res.dec_ids, t2 = _truncate(dbody, start, [], max_tokens, "decoder input", notes)
        res.truncated = res.truncated or t2
    return res


def input_lengths(model: nn.Module, tokenizer: Any, text: str, *,
                  decoder_text: str | None = None, max_tokens: int = 512,
                  add_special_tokens: bool = True) -> tuple[int, int | None]:
    """``(tokens, decoder tokens or None)`` that :func:`capture` with the same arguments would
    show, after special tokens and truncation, without running the model."""
    x = _prepare(model, model_info(model)["family"], tokenizer, text, decoder_text, max_tokens,
                 add_special_tokens)
    return len(x.tokens), (len(x.dec_ids) if x.dec_ids is not None else None)


def _budget_error(need: int, budget: int, n_tokens: int, to_disk: bool) -> ValueError:
    mib = 2**20
    what = "one layer's maps" if to_disk else "the kept maps"
    return ValueError(
        f"capturing attention for {n_tokens} tokens: {what} need about {need / mib:.1f} MiB "
        f"(layers · heads · Lq · Lk · 4 bytes), over memory_budget={budget / mib:.0f} MiB. "
        "Keep fewer maps with layers=[...] / heads=[...], shorten the input with "
        "max_tokens=..., " + ("" if to_disk else "stream layer by layer with to_disk=DIR, ")
        + "or raise memory_budget=...")


def capture(
    model: nn.Module,
    tokenizer_or_ids: Any = None,
    text_or_ids: Any = None,
    *,
    layers: Selection = None,
    heads: Selection = None,
    kinds: Sequence[str] | None = None,
    max_tokens: int = 512,
    decoder_text: str | Sequence[int] | None = None,
    to_disk: str | Path | None = None,
    memory_budget: int = DEFAULT_BUDGET,
    add_special_tokens: bool = True,
    top_k: int = 5,
) -> AttentionCapture:
    """Run ``model`` once and return its attention maps (see the module docstring).

    Args:
        tokenizer_or_ids: a :class:`~attnkit.data.tokenizers.Tokenizer` (then ``text_or_ids``
            is text or ids), or the input itself (ids; ViT: pixels ``(C, H, W)``/``(1, C, H,
            W)``) with ``text_or_ids=None``.
        layers / heads: model indices to keep (int, list, negative from the end, or a dict
            per kind); default all.
        kinds: subset of ``self``/``encoder``/``decoder``/``cross``; default all present.
        max_tokens: longest input kept (also capped by the model's position table).
        decoder_text: encoder–decoder models only: the decoder's (teacher-forced) input,
            text (prefixed with the decoder start token) or ids (used as they are).
        to_disk: a directory: stream each layer's maps to ``<kind>.npy`` memory-mapped files
            (plus ``capture.json``); ``AttentionCapture.load(dir)`` reopens it.
        memory_budget: bytes the kept maps may take (one layer's maps with ``to_disk``).
        top_k: predictions kept per position (next token, [MASK], classes); 0 for none.
    """
    tok = tokenizer_or_ids if hasattr(tokenizer_or_ids, "encode") else None
    inp = text_or_ids
    if tok is None and tokenizer_or_ids is not None:
        if text_or_ids is not None:
            raise TypeError("the second argument is neither a tokenizer nor the input; pass "
                            "capture(model, tokenizer, text) or capture(model, ids)")
        inp = tokenizer_or_ids
    if inp is None:
        raise ValueError("nothing to run: pass text (with a tokenizer) or token ids")
    info = model_info(model)
    family = info["family"]
    x = _prepare(model, family, tok, inp, decoder_text, max_tokens, add_special_tokens)
    n_dec = len(x.dec_ids) if x.dec_ids is not None else None
    lens = lengths(len(x.tokens), n_dec or 1)
    sites, sel_layers, sel_heads = plan(model, layers, heads, kinds)
    need = estimate_bytes(model, len(x.tokens), n_dec, layers=layers, heads=heads, kinds=kinds,
                          per_layer=to_disk is not None)
    if need > memory_budget:
        raise _budget_error(need, memory_budget, len(x.tokens), to_disk is not None)

    # buffers: kind -> (n_layers_kept, n_heads_kept, Lq, Lk), in memory or memory-mapped
    bufs: dict[str, Any] = {}
    disk = Path(to_disk) if to_disk is not None else None
    if disk is not None:
        disk.mkdir(parents=True, exist_ok=True)
    for k in sel_layers:
        shape = (len(sel_layers[k]), len(sel_heads[k]), *lens[k])
        bufs[k] = (torch.zeros(shape) if disk is None else np.lib.format.open_memmap(
            disk / f"{k}.npy", mode="w+", dtype=np.float32, shape=shape))
    seen: set[tuple[str, int]] = set()

    def make_hook(site: Site) -> Any:
        keep = site.kind in sel_layers and site.layer in sel_layers[site.kind]
        slot = sel_layers[site.kind].index(site.layer) if keep else -1
        head_idx = torch.tensor(sel_heads[site.kind]) if keep else None

        def pre_hook(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> Any:
            if kwargs.get("return_weights"):  # a layer not kept takes its fast path
                return args, {**kwargs, "return_weights": False}
            return None

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if isinstance(output, Tensor):  # a layer not kept: the (out, weights) asked for
                return output, None
            if not (isinstance(output, tuple) and len(output) == 2 and output[1] is not None):
                return None
            out, w = output
            if keep:
                w = w[0].index_select(0, head_idx.to(w.device)).float().cpu()
                if disk is None:
                    bufs[site.kind][slot].copy_(w)
                else:
                    bufs[site.kind][slot] = w.numpy()  # written through to the file
                seen.add((site.kind, site.layer))
            return out, None  # the model does not keep the maps

        return (hook, None if keep else pre_hook)

    device = next(model.parameters()).device
    with _lock(model):  # hooks live on the modules: one capture of a model at a time
        handles = []
        for s in sites:
            hook, pre_hook = make_hook(s)
            handles.append(s.module.register_forward_hook(hook))
            if pre_hook is not None:
                handles.append(s.module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                if family == "vit":
                    out = model(x.pixels.to(device), return_weights=True)
                elif family == "seq2seq":
                    out = model(torch.tensor([x.ids], device=device),
                                decoder_input_ids=torch.tensor([x.dec_ids], device=device),
                                return_weights=True)
                else:
                    out = model(torch.tensor([x.ids], device=device), return_weights=True)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
    missing = [(k, layer) for k in sel_layers for layer in sel_layers[k] if (k, layer) not in seen]
    if missing:
        raise RuntimeError(f"no attention weights were produced for {missing}")
    preds, logits = _predictions(model, out, tok, x.ids, top_k)

    dec_tokens = dec_raw = None
    if x.dec_ids is not None:
        dec_tokens, dec_raw = display_tokens(x.dec_ids, tok)
    result = AttentionCapture(
        tokens=x.tokens, weights=bufs, layers=sel_layers, heads=sel_heads, token_ids=x.ids,
        raw_tokens=x.raw, decoder_tokens=dec_tokens, decoder_token_ids=x.dec_ids,
        raw_decoder_tokens=dec_raw, text=x.text, decoder_text=x.dec_text, model=info,
        truncated=x.truncated, n_tokens_original=x.n_orig, warnings=x.notes, predictions=preds,
        logits=logits)
    if disk is not None:
        for m in bufs.values():
            m.flush()
        result.weights = {k: open_npy(disk / f"{k}.npy") for k in sel_layers}  # read maps
        bufs.clear()  # drops the write maps
        result.path = str(disk)
        result.write_sidecar(disk / SIDECAR, {"format": "npy",
                                              "files": {k: f"{k}.npy" for k in sel_layers}})
    return result
