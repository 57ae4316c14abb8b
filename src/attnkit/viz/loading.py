"""Load a model and its tokenizer for visualisation from one directory.

Two layouts are recognised by their ``config.json``:

* an attnkit training checkpoint (:mod:`attnkit.train.checkpoint`): ``{"format":
  "attnkit-checkpoint", "model": {"family": ..., ...}, "architecture": ..., "tokenizer":
  {"path": "tokenizer"}}``, loaded with :func:`attnkit.train.checkpoint.load_model`;
* a Hugging Face checkpoint directory: ``{"model_type": "gpt2" | "bert" | "t5" | ...}``,
  loaded with :func:`attnkit.interop.hf.load_hf`.

A training run's output directory (what ``attnkit train --out DIR`` writes) stands for its
``best/`` checkpoint, else its ``last/``.

The tokenizer is looked for in the checkpoint's recorded tokenizer directory (attnkit), then in
``<dir>/tokenizer/`` and ``<dir>/`` itself (a ``tokenizer.json``, what ``Tokenizer.save`` and
``transformers`` write). Vision models (family ``vit``) need none and get ``None``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from attnkit.data.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer
from attnkit.jsonconfig import read_json

__all__ = ["load_for_viz", "checkpoint_kind"]

_NO_TOKENIZER_FAMILIES = ("vit",)


def _read_json(path: Path) -> dict[str, Any]:
    return read_json(path)


def checkpoint_kind(directory: str | Path) -> str:
    """``"attnkit"`` (training checkpoint: ``config.json`` has a ``"model"`` section) or
    ``"hf"`` (``config.json`` has ``"model_type"``); ``ValueError`` otherwise."""
    d = Path(directory).expanduser()
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        old = d.with_name(d.name + ".old") / "config.json"  # interrupted checkpoint replace
        if old.is_file():
            cfg_file = old
        elif not d.exists():
            raise FileNotFoundError(f"checkpoint directory {d} does not exist")
        else:
            raise FileNotFoundError(f"{d} has no config.json: expected an attnkit training "
                                    "checkpoint or a Hugging Face model directory")
    cfg = _read_json(cfg_file)
    if isinstance(cfg.get("model"), dict):
        return "attnkit"
    if "model_type" in cfg:
        return "hf"
    raise ValueError(f"{cfg_file}: neither an attnkit checkpoint config (a 'model' section) nor "
                     "a Hugging Face config (a 'model_type' key)")


def _find_tokenizer(d: Path, recorded: Path | None) -> Tokenizer:
    candidates = [p for p in (recorded, d / "tokenizer", d) if p is not None]
    for c in candidates:
        if (c / TOKENIZER_FILE).is_file():
            return load_tokenizer(c)
    looked = ", ".join(str(c / TOKENIZER_FILE) for c in dict.fromkeys(candidates))
    raise FileNotFoundError(
        f"no tokenizer found for {d} (looked for {looked}); save the tokenizer beside the "
        "model with tokenizer.save(directory), or pass tokenizer= to save_checkpoint")


def _resolve_run_dir(d: Path) -> Path:
    """A run's output directory (no ``config.json``, a ``best/`` or ``last/`` inside) -> that
    checkpoint; anything else unchanged."""
    if not (d / "config.json").is_file():
        for sub in ("best", "last"):
            if (d / sub / "config.json").is_file():
                return d / sub
    return d


def load_for_viz(directory: str | Path, *, device: str = "cpu"
                 ) -> tuple[nn.Module, Tokenizer | None]:
    """``(model, tokenizer)`` from an attnkit training checkpoint or a Hugging Face directory.

    The model is on ``device`` in eval mode. The tokenizer is required (``FileNotFoundError``
    naming the places searched) except for vision models, which get ``None``.
    """
    d = _resolve_run_dir(Path(directory).expanduser())
    kind = checkpoint_kind(d)
    recorded: Path | None = None
    if kind == "attnkit":
        from attnkit.train.checkpoint import load_model, tokenizer_dir

        model = load_model(d, map_location=device)
        recorded = tokenizer_dir(d)
    else:
        model = _load_hf(d).to(device)
    model.eval()
    family = getattr(getattr(model, "config", None), "family", None)
    if family in _NO_TOKENIZER_FAMILIES:
        return model, None
    return model, _find_tokenizer(recorded.parent if recorded is not None else d, recorded)


def _load_hf(d: Path) -> nn.Module:
    """:func:`~attnkit.interop.hf.load_hf` (a BERT gets the head its ``architectures`` names:
    masked-LM predictions in the capture), falling back to the bare BERT encoder when the
    weights do not match that head exactly."""
    from attnkit.interop.hf import load_hf

    try:
        return load_hf(d)
    except ValueError:
        if _read_json(d / "config.json").get("model_type") != "bert":
            raise
    return load_hf(d, head=None)
