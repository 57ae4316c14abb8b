"""attnkit tokenizers as ``transformers`` tokenizers: the files ``AutoTokenizer`` loads.

    save_hf_tokenizer(tokenizer, "out/dir", family="causal_lm")   # tokenizer.json + config

What ``tokenizer(text)`` adds around a text (the ``tokenizers`` post-processor) follows the
layout the model family is trained on, so the exported model and tokenizer compute together
what attnkit computes (``pipeline("text-generation")``, ``pipeline("fill-mask")``,
``generate``):

=============  ==========================================  ==================================
family         attnkit's inputs                            ``tokenizer(text)``
=============  ==========================================  ==================================
``causal_lm``  a prompt as it is (documents packed)        ``text``
``bert``       ``start text end`` (MLM windows, fine-tune  ``[CLS] text [SEP]`` (pairs:
               examples: ``start a end b end``)            ``[CLS] a [SEP] b [SEP]``, types 1)
``seq2seq``    source + end                                ``text </s>``
=============  ==========================================  ==================================

(``start`` / ``end``: the tokenizer's ``start_id`` / ``end_id``, e.g. ``<bos>`` / ``<eos>``
for the char tokenizer.) ``model_input_names`` is set per family: a GPT-2 given
``token_type_ids`` would add a token embedding to every position, a T5 refuses them.

Kinds. BPE / WordPiece / any Hugging Face tokenizer keep their own ``tokenizer.json`` (model,
normaliser, pre-tokeniser, decoder); only the post-processor is set (a byte-level one is kept
for its offsets). The char tokenizer becomes a BPE model without merges over its vocabulary —
each character one token, each unknown character one ``<unk>`` — with a ``Fuse`` decoder, so
ids and texts are identical. attnkit's char tokenizer reads special-token strings in a text as
characters; the export does too (``split_special_tokens``), except for ``bert``, whose
``fill-mask`` needs the mask token written in the text. BPE / WordPiece read them as the
special tokens, in attnkit as in ``transformers``.

Every export is checked before it is written: the ``tokenizers`` object must map every id to
the token attnkit's tokenizer has, and encode and decode a probe text (the vocabulary's
characters, whitespace, an unknown character) as attnkit does, with and without the special
tokens; otherwise :class:`TokenizerExportError` says what differs. A tokenizer of another class
is refused the same way (never silently dropped).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tokenizers as hf
from tokenizers import AddedToken, decoders, models, processors

from attnkit.data.tokenizers import CharTokenizer, HFTokenizer, Tokenizer

__all__ = ["FAMILIES", "TokenizerExportError", "hf_tokenizer", "hf_tokenizer_config",
           "save_hf_tokenizer"]

FAMILIES = ("causal_lm", "bert", "seq2seq")
_INPUT_NAMES = {"causal_lm": ["input_ids", "attention_mask"],
                "bert": ["input_ids", "token_type_ids", "attention_mask"],
                "seq2seq": ["input_ids", "attention_mask"]}
_PROBE = "The quick brown fox -- def f(x):\n\treturn [x, 2.5]  # done\u2603 \u00e9\n"


class TokenizerExportError(ValueError):
    """An attnkit tokenizer that has no exact ``transformers`` equivalent."""


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"no tokenizer layout for model family {family!r}; valid: {FAMILIES}")


def _layout(tok: Tokenizer, family: str) -> tuple[list[int], list[int]]:
    """``(prefix, suffix)`` ids attnkit puts around one text of ``family``."""
    if family == "causal_lm":
        return [], []
    end = [] if tok.end_id is None else [tok.end_id]
    if family == "seq2seq":
        return [], end
    return ([] if tok.start_id is None else [tok.start_id]), end


def _template(tok: Tokenizer, family: str) -> processors.TemplateProcessing | None:
    pre, suf = _layout(tok, family)
    if not pre and not suf:
        return None
    names = {i: tok.id_to_token(i) for i in pre + suf}
    single = [names[i] for i in pre] + ["$A"] + [names[i] for i in suf]
    pair = single + ["$B:1"] + [f"{names[i]}:1" for i in suf]
    return processors.TemplateProcessing(single=single, pair=pair,
                                         special_tokens=sorted((t, i) for i, t in names.items()))


def _char_model(tok: CharTokenizer) -> hf.Tokenizer:
    """A BPE model without merges over the char vocabulary: every character is its own
    token, an unknown character one ``<unk>`` (``fuse_unk=False``)."""
    vocab = {t: i for i, t in enumerate(tok.vocab)}
    out = hf.Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=tok.special_tokens["unk"],
                                  fuse_unk=False))
    out.decoder = decoders.Fuse()
    out.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in dict.fromkeys(tok.special_tokens.values())])
    return out


def hf_tokenizer(tok: Tokenizer, family: str) -> hf.Tokenizer:
    """The ``tokenizers.Tokenizer`` of ``tok`` for a model of ``family`` (module docstring),
    checked against ``tok``; :class:`TokenizerExportError` when it cannot be exact."""
    _check_family(family)
    if isinstance(tok, CharTokenizer):
        out = _char_model(tok)
    elif isinstance(tok, HFTokenizer):
        out = hf.Tokenizer.from_str(tok.to_json_str())
    else:
        raise TokenizerExportError(
            f"{type(tok).__name__} (kind {getattr(tok, 'kind', '?')!r}) has no transformers "
            f"form; exportable: CharTokenizer and HFTokenizer (bpe, wordpiece, any "
            f"tokenizer.json)")
    template = _template(tok, family)
    post = json.loads(out.to_str()).get("post_processor") or {}
    keep = [processors.ByteLevel(trim_offsets=post.get("trim_offsets", True))] \
        if post.get("type") == "ByteLevel" else []
    steps = keep + ([template] if template is not None else [])
    out.post_processor = (None if not steps else steps[0] if len(steps) == 1
                          else processors.Sequence(steps))
    _verify(out, tok, family)
    return out


def _verify(out: hf.Tokenizer, tok: Tokenizer, family: str) -> None:
    problems: list[str] = []
    if out.get_vocab_size(with_added_tokens=True) != tok.vocab_size:
        problems.append(f"vocabulary size {out.get_vocab_size(with_added_tokens=True)} vs "
                        f"{tok.vocab_size}")
    wrong = [i for i in range(tok.vocab_size) if out.id_to_token(i) != tok.id_to_token(i)]
    if wrong:
        i = wrong[0]
        problems.append(f"{len(wrong)} ids map to other tokens (id {i}: "
                        f"{out.id_to_token(i)!r} vs {tok.id_to_token(i)!r})")
    chars = "".join(sorted({c for i in range(min(tok.vocab_size, 5000))
                            for c in (tok.id_to_token(i) or "")
                            if c.isprintable() and i not in tok.all_special_ids}))[:500]
    for text in (_PROBE, chars):
        ids = tok.encode(text)
        got = out.encode(text, add_special_tokens=False).ids
        if got != ids:
            problems.append(f"{text[:30]!r}... encodes to {got[:12]} vs {ids[:12]}")
            continue
        pre, suf = _layout(tok, family)
        framed = out.encode(text).ids
        if framed != pre + ids + suf:
            problems.append(f"tokenizer(text) gives {framed[:4]}...{framed[-2:]}, attnkit's "
                            f"{family} inputs are {(pre + ids)[:4]}...{(ids + suf)[-2:]}")
        for skip in (False, True):
            if out.decode(ids, skip_special_tokens=skip) != tok.decode(ids, skip):
                problems.append(f"decode(skip_special_tokens={skip}) differs on {text[:30]!r}")
    if problems:
        raise TokenizerExportError(
            f"the {tok.kind} tokenizer cannot be expressed exactly for transformers: "
            + "; ".join(problems))


def hf_tokenizer_config(tok: Tokenizer, family: str, *, model_max_length: int | None = None
                        ) -> dict[str, Any]:
    """``tokenizer_config.json`` for ``tok`` exported for a model of ``family``."""
    _check_family(family)
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{f"{role}_token": t for role, t in sorted(tok.special_tokens.items())},
        "model_input_names": _INPUT_NAMES[family],
        # attnkit decodes exactly: no "clean up" of spaces before punctuation
        "clean_up_tokenization_spaces": False,
        "padding_side": "left" if family == "causal_lm" else "right",
        "attnkit_type": tok.kind,
    }
    if isinstance(tok, CharTokenizer) and family != "bert":
        cfg["split_special_tokens"] = True  # "<eos>" in a text is five characters, as in attnkit
    if model_max_length is not None:
        cfg["model_max_length"] = model_max_length
    return cfg


def save_hf_tokenizer(tok: Tokenizer, directory: str | Path, *, family: str,
                      model_max_length: int | None = None) -> list[str]:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory`` (created if
    needed) for a model of ``family``; returns the file names. Everything is checked first
    (:func:`hf_tokenizer`), so a refused tokenizer writes nothing."""
    out = hf_tokenizer(tok, family)
    cfg = hf_tokenizer_config(tok, family, model_max_length=model_max_length)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False)
                                              + "\n", encoding="utf-8")
    return ["tokenizer.json", "tokenizer_config.json"]
