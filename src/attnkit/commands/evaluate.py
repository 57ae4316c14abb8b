"""``attnkit evaluate``: metrics of a checkpoint on held-out data.

=====================================  =========================================  =============
checkpoint                             default data                               metrics
=====================================  =========================================  =============
causal LM / BERT masked LM             the run's validation split (``run.json``   loss,
                                       beside the checkpoint), else the built-in  perplexity
                                       corpus's; ``--data`` evaluates a whole
                                       text file / folder / ``.jsonl``
seq2seq                                the run's validation pairs, or ``--data``  loss,
                                                                                  perplexity
sequence classification               the fine-tuning run's ``--val`` file, or   accuracy, loss
                                       ``--data`` (CSV/TSV/JSON/JSONL)
extractive QA                          the run's ``--val`` file, or ``--data``    exact match, F1
                                       (SQuAD JSON)
=====================================  =========================================  =============

Language-model loss is the mean over target tokens (as the trainer's validation); masked-LM
masking is the fixed, seeded evaluation masking of :class:`~attnkit.data.MaskedLMBatches`.
"""

from __future__ import annotations

import collections
import json
import math
import re
import string
from typing import Any

import typer
from rich.table import Table

from attnkit.commands.common import (
    CliError,
    cli_errors,
    console,
    cpu_threads,
    fail,
    load_any,
    read_run_info,
)

__all__ = ["evaluate_cmd", "lm_loss", "classification_metrics", "qa_metrics",
           "squad_exact_match", "squad_f1"]


# ---- metrics --------------------------------------------------------------------------------


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


def lm_loss(model: Any, source: Any, max_batches: int | None = None) -> dict[str, Any]:
    """Mean loss per target token over ``source.eval_batches`` (the trainer's definition)."""
    import torch

    from attnkit.train.losses import compute_loss, count_targets

    device = next(model.parameters()).device
    total = count = 0.0
    batches = 0
    model.eval()
    with torch.no_grad():
        for b in source.eval_batches(max_batches):
            b = _to(b, device)
            loss = compute_loss(model, model, b).float()
            n = count_targets(model, b)
            n = 1.0 if n is None else float(n)
            total += float(loss) * n
            count += n
            batches += 1
    if not count:
        raise CliError("no evaluation batches (empty data)")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf,
            "tokens": int(count), "batches": batches}


def classification_metrics(model: Any, source: Any, max_batches: int | None = None
                           ) -> dict[str, Any]:
    """Accuracy (and mean loss) of a sequence classifier over ``source.eval_batches``."""
    import torch

    device = next(model.parameters()).device
    correct = seen = 0
    loss_sum = 0.0
    batches = 0
    model.eval()
    with torch.no_grad():
        for b in source.eval_batches(max_batches):
            b = _to(b, device)
            out = model(**b)
            pred = out.logits.argmax(-1)
            correct += int((pred == b["labels"]).sum())
            seen += len(pred)
            loss_sum += float(out.loss) * len(pred)
            batches += 1
    if not seen:
        raise CliError("no evaluation examples")
    return {"accuracy": correct / seen, "loss": loss_sum / seen, "examples": seen,
            "batches": batches}


def _normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_exact_match(prediction: str, gold: str) -> float:
    return float(_normalize_answer(prediction) == _normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    p, g = _normalize_answer(prediction).split(), _normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def qa_metrics(model: Any, source: Any, max_batches: int | None = None,
               max_answer_len: int = 30) -> dict[str, Any]:
    """SQuAD exact match and F1 (in %, best over the gold answers; an unanswerable question
    counts as gold ``""``): per example, the highest-scoring context span over its windows."""
    import torch

    from attnkit.models.bert import best_span

    device = next(model.parameters()).device
    best: dict[int, tuple[float, str]] = {}
    row = 0
    model.eval()
    with torch.no_grad():
        for b in source.eval_batches(max_batches):
            b = _to(b, device)
            out = model(**{k: v for k, v in b.items() if k != "labels"})
            feats = source.features[row:row + len(b["input_ids"])]
            L = b["input_ids"].shape[1]
            mask = torch.tensor([[j < len(f.offsets) and f.offsets[j] is not None
                                  for j in range(L)] for f in feats], device=device)
            starts, ends, scores = best_span(out.start_logits, out.end_logits, max_answer_len,
                                             mask)
            for f, s, e, sc in zip(feats, starts.tolist(), ends.tolist(), scores.tolist(),
                                   strict=True):
                text = source.answer_text(f, s, e) if math.isfinite(sc) else ""
                if f.example_index not in best or sc > best[f.example_index][0]:
                    best[f.example_index] = (sc, text)
            row += len(feats)
    if not best:
        raise CliError("no evaluation examples")
    em = f1 = 0.0
    for i, (_, pred) in best.items():
        golds = [t for t, _ in source.examples[i].answers] or [""]
        em += max(squad_exact_match(pred, g) for g in golds)
        f1 += max(squad_f1(pred, g) for g in golds)
    n = len(best)
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n, "examples": n,
            "features": row}


# ---- data for a checkpoint ------------------------------------------------------------------


def _token_array(texts: list[str], tok: Any) -> Any:
    import numpy as np

    ids: list[int] = []
    end = tok.end_id
    for t in texts:
        piece = tok.encode(t)
        if piece:
            ids.extend(piece)
            if end is not None:
                ids.append(end)
    return np.asarray(ids, dtype=np.int64)


def _lm_texts(data: str | None, run: dict[str, Any]) -> tuple[list[str], str]:
    """Evaluation texts: ``--data`` whole, else the run's (or the default) validation split."""
    from attnkit.commands.config_files import DataConfig
    from attnkit.commands.train_data import load_corpus, split_corpus

    if data is not None:
        docs, where = load_corpus(data)
        return [d.text for d in docs], where
    try:
        dc = DataConfig(**(run.get("data") or {}))
    except (TypeError, ValueError):
        dc = DataConfig()
    if dc.val_path:
        docs, where = load_corpus(dc.val_path, dc.text_field)
        return [d.text for d in docs], where
    if run and not dc.val_fraction:  # trained on everything: there is no held-out split
        fail(f"the run trained on all of {dc.path or 'the built-in corpus'} "
             "(data.val_fraction=0): it has no validation split to evaluate; pass --data FILE")
    docs, where = load_corpus(dc.path, dc.text_field)
    _, val = split_corpus(docs, dc.val_fraction or 0.1, dc.split_seed)
    if not val:
        fail(f"the validation split of {where} is empty; pass --data")
    return [d.text for d in val], f"{where}, validation split"


def _task_file(data: str | None, run: dict[str, Any], what: str) -> str:
    path = data or (run.get("task") or {}).get("val") or (run.get("task") or {}).get("train")
    if path is None:
        fail(f"evaluating a {what} checkpoint needs --data FILE")
    return path


# ---- the command ----------------------------------------------------------------------------


def evaluate_cmd(
    checkpoint: str = typer.Option(
        "runs/char-gpt", "--checkpoint", "-k",
        help="attnkit checkpoint dir, a run's out dir (best/, else last/), or a HF model dir."),
    data: str = typer.Option(None, "--data", "-d", help="Evaluation data (default: the run's "
                             "validation split; see the table in the docs)."),
    max_batches: int = typer.Option(None, "--max-batches", min=1, help="Stop after N batches "
                                    "(default: all)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Sequences per "
                                   "batch."),
    seq_len: int = typer.Option(None, "--seq-len", help="LM window length (default: the "
                                "run's, else the model's context)."),
    text_column: str = typer.Option(None, "--text-column", help="Classification: text column "
                                    "(default: the fine-tuning run's, else 'text')."),
    text_pair_column: str = typer.Option(None, "--text-pair-column", help="Classification: "
                                         "second text column, if any."),
    label_column: str = typer.Option(None, "--label-column", help="Classification: label "
                                     "column (default: the run's, else 'label')."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0 = auto: fewer "
                                "when other processes keep the cores busy)."),
) -> None:
    """Held-out metrics: LM loss/perplexity, classifier accuracy, or QA exact match/F1.

    Example: attnkit evaluate --checkpoint runs/char-gpt
    """
    with cpu_threads(threads, device), cli_errors():
        lm = load_any(checkpoint, device)
        run = read_run_info(lm.path)
        arch = lm.architecture
        tok = lm.tokenizer
        model = lm.model
        if seq_len is not None and arch not in ("CausalLM", "BertForMaskedLM"):
            fail(f"--seq-len sets the window of language-model evaluation; a {arch} reads "
                 "whole examples")
        if arch in ("CausalLM", "BertForMaskedLM"):
            from attnkit.data import CausalLMBatches, MaskedLMBatches

            cfg = model.config
            limit = cfg.max_seq_len if arch == "CausalLM" else cfg.max_position
            if seq_len is not None and not 1 <= seq_len <= limit:
                fail(f"--seq-len {seq_len} is outside 1..{limit} (the model's "
                     f"{'max_seq_len' if arch == 'CausalLM' else 'max_position'})")
            texts, where = _lm_texts(data, run)
            ids = _token_array(texts, tok)
            lm.check_ids(ids, f"the evaluation text ({where})")
            if arch == "CausalLM":
                L = seq_len or (run.get("data") or {}).get("seq_len") or cfg.max_seq_len
                L = min(L, cfg.max_seq_len)
                src = CausalLMBatches(ids, batch_size, L, shuffle=False)
            else:
                L = seq_len or (run.get("data") or {}).get("seq_len") or min(128,
                                                                             cfg.max_position)
                src = MaskedLMBatches(ids, tok, batch_size, L, 0, shuffle=False)
            metrics = lm_loss(model, src, max_batches)
        elif arch == "Seq2SeqLM":
            from attnkit.data import Seq2SeqBatches
            from attnkit.data.tasks import read_records

            rd = run.get("data") or {}
            path = data or rd.get("val_path") or rd.get("path")
            if path is None:
                fail("evaluating a seq2seq checkpoint needs --data PAIRS.jsonl")
            sf, tf = rd.get("source_field", "source"), rd.get("target_field", "target")
            rows = read_records(path)
            bad = next((i for i, r in enumerate(rows) if sf not in r or tf not in r), None)
            if bad is not None:
                fail(f"{path}: record {bad} lacks {sf!r} or {tf!r} (fields: {sorted(rows[bad])})")
            pairs = [(str(r[sf]), str(r[tf])) for r in rows]
            where = path
            src = Seq2SeqBatches(pairs, tok, batch_size, shuffle=False,
                                 decoder_start_token_id=model.config.decoder_start_token_id)
            metrics = lm_loss(model, src, max_batches)
        elif arch == "BertForSequenceClassification":
            from attnkit.data import ClassificationBatches

            task = run.get("task") or {}
            where = _task_file(data, run, "classification")
            label_map = task.get("label_map")
            if label_map and len(label_map) != model.config.num_labels:
                label_map = None
            src = ClassificationBatches.from_file(
                where, tok, batch_size, shuffle=False,
                text_column=text_column or task.get("text_column", "text"),
                text_pair_column=text_pair_column or task.get("text_pair_column"),
                label_column=label_column or task.get("label_column", "label"),
                max_len=task.get("max_len", min(128, model.config.max_position)),
                label_map=label_map)
            if src.num_labels > model.config.num_labels:
                fail(f"{where} has {src.num_labels} labels, the model {model.config.num_labels}")
            metrics = classification_metrics(model, src, max_batches)
        elif arch == "BertForQuestionAnswering":
            from attnkit.data import SpanQABatches

            task = run.get("task") or {}
            where = _task_file(data, run, "question-answering")
            src = SpanQABatches(where, tok, batch_size, shuffle=False,
                                max_len=task.get("max_len", min(384, model.config.max_position)),
                                doc_stride=task.get("doc_stride", 128))
            metrics = qa_metrics(model, src, max_batches)
        else:
            fail(f"cannot evaluate a {arch} ({lm.path}): supported are causal LMs, BERT masked "
                 "LM / classification / QA, and seq2seq models")
    result = {"checkpoint": str(lm.path), "architecture": arch, "data": str(where), **metrics}
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    # the paths go on lines of their own: a table title or caption wraps to the table's width
    typer.echo(f"checkpoint: {lm.path} ({arch})")
    typer.echo(f"data: {where}")
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else f"{v:,}")
    console.print(table)
