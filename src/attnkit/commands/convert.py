"""``attnkit convert``: Hugging Face model directory <-> attnkit checkpoint directory.

* ``--from hf --to attnkit``: :func:`attnkit.interop.hf.load_hf` (BERT keeps the head named
  in ``architectures``), then :func:`attnkit.train.checkpoint.save_checkpoint` with the
  directory's ``tokenizer.json`` (+ ``tokenizer_config.json``) when present, and the pooling of
  a sentence-transformers directory (``modules.json``) as ``config.json``'s
  ``"sentence_pooling"``.
* ``--from attnkit --to hf``: :func:`attnkit.train.checkpoint.load_model`, then
  :func:`attnkit.interop.hf.save_hf` with the checkpoint's tokenizer (and sentence pooling):
  ``AutoModelFor*``, ``AutoTokenizer``, ``pipeline(...)`` and sentence-transformers load the
  result. A tokenizer ``transformers`` cannot express exactly is an error, and then nothing
  is written.

``--from`` defaults to what ``SRC`` is; ``--to`` to the other format.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import typer

from attnkit.commands.common import (
    checkpoint_kind,
    cli_errors,
    fail,
    find_checkpoint,
    human,
    output_dir,
)

__all__ = ["convert_cmd"]

FORMATS = ("hf", "attnkit")


def convert_cmd(
    src: str = typer.Argument(..., help="Source directory (or an attnkit run dir: best/, "
                              "else last/)."),
    dst: str = typer.Argument(..., help="Destination directory (must not exist, or be empty, "
                              "unless --overwrite)."),
    from_: str = typer.Option(None, "--from", help="hf | attnkit (default: detected from "
                              "SRC)."),
    to: str = typer.Option(None, "--to", help="attnkit | hf (default: the other one)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty DST."),
) -> None:
    """Convert a Hugging Face model directory to an attnkit checkpoint, or back.

    Example: attnkit convert --from hf --to attnkit ./gpt2 ./gpt2-attnkit
    """
    with cli_errors():
        for name, value in (("--from", from_), ("--to", to)):
            if value is not None and value not in FORMATS:
                fail(f"{name} {value!r}: valid formats are {', '.join(FORMATS)}")
        s = Path(src).expanduser()
        if not s.exists():
            fail(f"source not found: {s}")
        if from_ is None:
            kind = checkpoint_kind(s)
            if kind is None:
                _, kind = find_checkpoint(s)
            from_ = kind
        to = to or ("attnkit" if from_ == "hf" else "hf")
        if from_ == to:
            fail(f"--from {from_} --to {to}: nothing to convert (copy the directory instead)")
        d = output_dir(dst, "destination")  # a file there is refused, never deleted
        replace = d.exists() and any(d.iterdir())
        if replace:
            if not overwrite:
                fail(f"destination {d} exists and is not empty; pass --overwrite to replace it")
            ds, ss = d.resolve(), s.resolve()
            if ds == ss or ss.is_relative_to(ds) or ds.is_relative_to(ss):
                fail(f"destination {d} and source {s} overlap: --overwrite would delete the "
                     "source; pick another destination")
        # load and check everything first: a refused source leaves the destination as it was
        write = _hf_to_attnkit(s, d) if from_ == "hf" else _attnkit_to_hf(s, d)
        if replace:
            shutil.rmtree(d)
        message = write()
    typer.echo(message)


def _hf_to_attnkit(src: Path, dst: Path) -> Callable[[], str]:
    """Load ``src``; returns the function that writes ``dst`` and says what it wrote."""
    from attnkit.commands.common import load_hf_model
    from attnkit.data import load_tokenizer
    from attnkit.interop.sentence_transformers import read_sentence_pooling
    from attnkit.train.checkpoint import save_checkpoint

    if checkpoint_kind(src) != "hf":
        fail(f"{src} is not a Hugging Face model directory (config.json with a model_type)")
    model = load_hf_model(src)
    tok = None
    if (src / "tokenizer.json").is_file():
        tok = load_tokenizer(src)
        inner = getattr(tok, "tok", None)
        if inner is not None:  # fixed padding / truncation belong to the batch sources
            inner.no_padding()
            inner.no_truncation()
    pooling = read_sentence_pooling(src)
    if pooling is not None and type(model).__name__ != "BertModel":
        fail(f"{src / 'modules.json'} describes a sentence-transformers model, but the "
             f"encoder is a {type(model).__name__}; attnkit embeds with a BertModel")
    extra = None if pooling is None else {"sentence_pooling": pooling.to_dict()}

    def write() -> str:
        save_checkpoint(dst, model, tokenizer=tok, extra_config=extra)
        n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        note = "" if tok is not None else " (no tokenizer.json in the source: none saved)"
        what = "" if pooling is None else f", sentence pooling {pooling.pooling}"
        return (f"converted {src} (Hugging Face) -> {dst} (attnkit {type(model).__name__}, "
                f"{human(n)} parameters{', tokenizer ' + tok.kind if tok else ''}{what}){note}")

    return write


def _attnkit_to_hf(src: Path, dst: Path) -> Callable[[], str]:
    """Load ``src`` and check that its tokenizer exports; returns the function that writes
    ``dst`` and says what it wrote."""
    from attnkit.data import load_tokenizer
    from attnkit.interop.hf import check_hf_export, save_hf
    from attnkit.interop.sentence_transformers import SentencePooling
    from attnkit.train.checkpoint import load_model, read_config, tokenizer_dir

    ckpt, kind = find_checkpoint(src)
    if kind != "attnkit":
        fail(f"{src} is not an attnkit checkpoint")
    model = load_model(ckpt)
    tdir = tokenizer_dir(ckpt)
    tok = load_tokenizer(tdir) if tdir is not None else None
    pooling = read_config(ckpt).get("sentence_pooling")
    pooling = None if pooling is None else SentencePooling.from_dict(pooling)
    check_hf_export(model, tokenizer=tok, sentence_pooling=pooling)

    def write() -> str:
        save_hf(model, dst, tokenizer=tok, sentence_pooling=pooling)
        parts = ["Hugging Face"]
        parts.append(f"{tok.kind} tokenizer for AutoTokenizer" if tok is not None
                     else "no tokenizer (the checkpoint has none)")
        if pooling is not None:
            parts.append(f"sentence-transformers, {pooling.pooling} pooling")
        return (f"converted {ckpt} (attnkit {type(model).__name__}) -> {dst} "
                f"({', '.join(parts)})")

    return write
