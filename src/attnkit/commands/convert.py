"""``attnkit convert``: Hugging Face model directory <-> attnkit checkpoint directory.

* ``--from hf --to attnkit``: :func:`attnkit.interop.hf.load_hf` (BERT keeps the head named
  in ``architectures``), then :func:`attnkit.train.checkpoint.save_checkpoint` with the
  directory's ``tokenizer.json`` (+ ``tokenizer_config.json``) when present.
* ``--from attnkit --to hf``: :func:`attnkit.train.checkpoint.load_model`, then
  :func:`attnkit.interop.hf.save_hf`, and the checkpoint's tokenizer files copied beside
  (``transformers.AutoTokenizer`` loads BPE/WordPiece ones; the char tokenizer's
  ``tokenizer.json`` is attnkit's own format).

``--from`` defaults to what ``SRC`` is; ``--to`` to the other format.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from attnkit.commands.common import checkpoint_kind, cli_errors, fail, find_checkpoint, human

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
        d = Path(dst).expanduser()
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            if not overwrite:
                fail(f"destination {d} exists and is not empty; pass --overwrite to replace it")
            ds, ss = d.resolve(), s.resolve()
            if ds == ss or ss.is_relative_to(ds) or ds.is_relative_to(ss):
                fail(f"destination {d} and source {s} overlap: --overwrite would delete the "
                     "source; pick another destination")
            shutil.rmtree(d) if d.is_dir() else d.unlink()
        if from_ == "hf":
            message = _hf_to_attnkit(s, d)
        else:
            message = _attnkit_to_hf(s, d)
    typer.echo(message)


def _hf_to_attnkit(src: Path, dst: Path) -> str:
    from attnkit.commands.common import load_hf_model
    from attnkit.data import load_tokenizer
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
    save_checkpoint(dst, model, tokenizer=tok)
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    note = "" if tok is not None else " (no tokenizer.json in the source: none saved)"
    return (f"converted {src} (Hugging Face) -> {dst} (attnkit {type(model).__name__}, "
            f"{human(n)} parameters{', tokenizer ' + tok.kind if tok else ''}){note}")


def _attnkit_to_hf(src: Path, dst: Path) -> str:
    from attnkit.data import load_tokenizer
    from attnkit.interop.hf import save_hf
    from attnkit.train.checkpoint import load_model, tokenizer_dir

    ckpt, kind = find_checkpoint(src)
    if kind != "attnkit":
        fail(f"{src} is not an attnkit checkpoint")
    model = load_model(ckpt)
    save_hf(model, dst)
    tdir = tokenizer_dir(ckpt)
    copied = []
    if tdir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (tdir / name).is_file():
                shutil.copyfile(tdir / name, dst / name)
                copied.append(name)
    note = ""
    if tdir is not None and load_tokenizer(tdir).kind == "char":
        note = " (the char tokenizer is attnkit's own format: attnkit loads it, transformers not)"
    return (f"converted {ckpt} (attnkit {type(model).__name__}) -> {dst} (Hugging Face"
            f"{', ' + ' + '.join(copied) if copied else ', no tokenizer'}){note}")
