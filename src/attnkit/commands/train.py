"""``attnkit train``: corpus -> tokenizer -> token files -> model -> Trainer -> report + sample.

Ctrl-C saves ``last/`` at the next step boundary and exits with status 130 (128 + SIGINT, what
shells expect), so ``attnkit train && attnkit generate`` stops there.

With no arguments: the ``char-gpt`` preset (character tokenizer, vocabulary from the corpus)
on the built-in corpus (Python's documentation, split 90/10 by document), batch 12 x context
64 for :data:`DEFAULT_STEPS` steps, then the validation loss / perplexity and a ~300-character
sample streamed from the trained model. Everything lands in ``runs/char-gpt/``::

    run.json            the resolved run configuration (what --resume starts from)
    data/               tokenized train/val splits (reused when corpus and tokenizer match)
    metrics.jsonl       training / validation records; loss_curve.png
    last/  best/        checkpoints (attnkit.train.checkpoint), tokenizer included

``--objective mlm`` trains a BERT (``bert-tiny``, WordPiece) with masked-LM batches,
``--objective seq2seq`` an encoder-decoder (``t5-tiny``, BPE) on ``{"source", "target"}``
records. Under ``torchrun --nproc_per_node=N -m attnkit.cli train ...`` the same command runs
data-parallel (DDP unless ``--distributed fsdp``); only rank 0 prints and writes.
"""

from __future__ import annotations

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
    human,
    is_main,
    write_json,
)
from attnkit.commands.train_config import DEFAULT_STEPS, ResolvedRun, resolve_run
from attnkit.commands.train_data import Prepared, prepare

__all__ = ["train_cmd", "resolve_run", "SAMPLE_CHARS", "SAMPLE_RULE"]

SAMPLE_CHARS = 300
SAMPLE_RULE = "\u2500" * 72  # frames the sample (dashes would blend with RST underlines)


# ---- the command ----------------------------------------------------------------------------


def train_cmd(
    config: str = typer.Option(None, "--config", "-c", help="TOML/YAML/JSON config file with "
                               "sections model/model_preset, train, data, tokenizer."),
    set_: list[str] = typer.Option(  # noqa: B008
        None, "--set", help="Override one setting: SECTION.KEY=VALUE, e.g. train.lr=3e-4 or "
        "model.n_layers=2 (repeatable; applied last)."),
    preset: str = typer.Option(None, "--preset", "-p", help="Model preset (default: char-gpt; "
                               "bert-tiny for mlm, t5-tiny for seq2seq)."),
    objective: str = typer.Option(None, "--objective", help="causal | mlm | seq2seq "
                                  "(default: causal, or the preset's)."),
    steps: int = typer.Option(None, "--steps", help=f"Optimizer steps (default "
                              f"{DEFAULT_STEPS})."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="Sequences per step and "
                                   "process (default 12)."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate (default by width: 3e-3 "
                             "up to d_model 128, 1e-3 to 512, else 6e-4; min_lr = lr/10)."),
    out: str = typer.Option(None, "--out", "-o", help="Output directory (default "
                            "runs/<preset>)."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    compile_: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile the "
                                  "model."),
    precision: str = typer.Option(None, "--precision", help="auto | fp32 | bf16 | fp16 (auto: "
                                  "bf16 autocast with fp32 master weights on CUDA and on CPUs "
                                  "with AVX-512 BF16 / AMX, else fp32)."),
    tensorboard: bool = typer.Option(None, "--tensorboard/--no-tensorboard", help="Also log "
                                     "to TensorBoard in OUT/tb (needs the tensorboard "
                                     "package)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its "
                                "last/ checkpoint (same settings unless overridden)."),
    seed: int = typer.Option(None, "--seed", help="Training seed."),
    data: str = typer.Option(None, "--data", "-d", help="Text file, folder of .txt/.md, or "
                             ".jsonl (seq2seq: source/target records). Default: built-in "
                             "corpus."),
    val_data: str = typer.Option(None, "--val-data", help="Separate validation data (default: "
                                 "10% of the documents)."),
    tokenizer: str = typer.Option(None, "--tokenizer", "-t", help="char | bpe | wordpiece | "
                                  "PATH of a saved tokenizer (default: by preset)."),
    vocab_size: int = typer.Option(None, "--vocab-size", help="BPE/WordPiece vocabulary size "
                                   "(default 4096)."),
    eval_every: int = typer.Option(None, "--eval-every", help="Validate every N steps "
                                   "(default steps/8)."),
    distributed: str = typer.Option(None, "--distributed", help="ddp | fsdp under torchrun "
                                    "(default ddp when WORLD_SIZE > 1)."),
    sample_chars: int = typer.Option(SAMPLE_CHARS, "--sample-chars", min=0,
                                     help="Characters of text to sample after training "
                                     "(0 = none)."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0 = auto: torch's "
                                "default, fewer when other processes keep the cores busy)."),
) -> None:
    """Train a model; with no arguments a character-level GPT on Python's documentation.

    Example: attnkit train --steps 500 --set model.n_layers=2
    """
    t_start = time.perf_counter()
    flags = dict(objective=objective, model_preset=preset, steps=steps, batch_size=batch_size,
                 lr=lr, out=out, device=device, compile=compile_, precision=precision,
                 tensorboard=tensorboard,
                 resume=resume or None, seed=seed, data=data, val_data=val_data,
                 tokenizer=tokenizer, vocab_size=vocab_size, eval_every=eval_every,
                 distributed=distributed)
    from attnkit.train import Trainer
    from attnkit.train import distributed as D

    with cli_errors():
        res = resolve_run(config, set_, flags)
    with cpu_threads(threads, res.train.device) as threads_note:
        with cli_errors():
            dist = D.init_distributed(res.train.distributed, res.train.device)
            prep = prepare(res, dist)
            if is_main():
                _start(res, prep, dist, threads_note)
            trainer = Trainer(prep.model, prep.train_source, prep.val_source, res.train,
                              prep.tokenizer)
        try:
            summary = trainer.train()
        finally:
            trainer.close()
        if is_main():
            _report(res, prep, summary, t_start, sample_chars)
    if summary.interrupted:  # saved; 128 + SIGINT, so `attnkit train && ...` stops here
        raise typer.Exit(EXIT_INTERRUPTED)


def _start(res: ResolvedRun, prep: Prepared, dist: Any, threads_note: str | None) -> None:
    """Write run.json (a fresh run also clears the old metrics) and describe the run."""
    if not res.resume:
        if (res.out_dir / "last").is_dir():
            echo(f"note: {res.out_dir} holds an earlier run; starting a new one there (--resume "
                 "continues a run)")
        (res.out_dir / "metrics.jsonl").unlink(missing_ok=True)
    info = {**res.run.to_dict(), "model_config": prep.model.config.to_dict(),
            "architecture": type(prep.model).__name__, "tokenizer_kind": prep.tokenizer.kind}
    for key in ("path", "val_path"):  # absolute: evaluate may run from elsewhere
        if info["data"][key] is not None:
            info["data"][key] = str(Path(info["data"][key]).expanduser().resolve())
    write_json(res.out_dir / RUN_FILE, info)
    for line in prep.describe:
        echo(line)
    tc = res.train
    world = f" x {dist.world_size} processes ({tc.distributed})" if dist.enabled else ""
    echo(f"training: {tc.steps} steps, batch {tc.batch_size}{world}, lr {tc.lr:g}, device "
         f"{dist.device}, out {res.out_dir}"
         + (f" (resuming from {Path(tc.out_dir) / 'last'})" if res.resume else ""))
    from attnkit.train.precision import describe

    echo(f"precision: {describe(tc.precision, dist.device)}")
    if threads_note:
        echo(threads_note)


def _report(res: ResolvedRun, prep: Prepared, summary: Any, t_start: float,
            sample_chars: int) -> None:
    """Final validation on the whole split (what ``attnkit evaluate`` reports by default),
    the sample, where the checkpoints are."""
    from attnkit.commands.evaluate import lm_loss
    from attnkit.train.checkpoint import load_model

    out = res.out_dir
    s = summary
    echo(f"{'interrupted' if s.interrupted else 'done'}: step {s.step} of {res.train.steps} "
         f"in {s.wall_s:.1f} s ({s.ms_per_iter:.0f} ms/step, {s.tokens_per_s:,.0f} tokens/s)")
    if s.interrupted:  # the user wants out: no full validation pass, no sample
        echo(f"saved {out / 'last'}; continue with: attnkit train --resume --out {out}")
        return
    model = load_model(out / "last")  # the final weights, whatever the wrapping was
    if prep.val_source is not None:
        m = lm_loss(model, prep.val_source)
        echo(f"validation: loss {m['loss']:.4f}, perplexity {m['perplexity']:.2f} (whole "
             f"split, {human(m['tokens'])} tokens; final model)")
    elif s.final_loss is not None:
        echo(f"train loss {s.final_loss:.4f} (no validation data)")
    if sample_chars and (prep.sample_prompt is not None or prep.sample_source is not None):
        _print_sample(model, res, prep, sample_chars)
    best = out / "best"
    echo(f"checkpoints: {out / 'last'} (step {s.step})"
         + (f", {best} (lowest periodic validation loss)" if best.is_dir() else ""))
    ck = best if best.is_dir() else out / "last"
    if res.run.objective != "mlm":
        echo(f"next: attnkit generate --checkpoint {ck} \"...\"  |  attnkit evaluate "
             f"--checkpoint {ck}")
    else:
        echo(f"next: attnkit evaluate --checkpoint {ck}  |  attnkit finetune --task "
             f"classification --base {ck} --train FILE")
    echo(f"total: {time.perf_counter() - t_start:.1f} s (data, training, evaluation, sample)")


def _print_sample(model: Any, res: ResolvedRun, prep: Prepared, chars: int) -> None:
    import torch

    from attnkit.commands.generate import sample_text

    tok = prep.tokenizer
    seed = res.train.seed
    if prep.sample_source is not None:
        from attnkit.generate import generate_seq2seq
        from attnkit.sampling import GenerationConfig

        ids = torch.tensor([tok.encode(prep.sample_source)
                            + ([] if tok.end_id is None else [tok.end_id])])
        out = generate_seq2seq(model, ids, None, GenerationConfig(
            max_new_tokens=min(chars, 64), pad_token_id=tok.pad_id or 0))[0]
        echo(f"sample (greedy): {prep.sample_source!r} -> "
             f"{tok.decode(out, skip_special_tokens=True)!r}")
        return
    per_token = 1 if tok.kind == "char" else 3
    echo(f"sample (seed {seed}, temperature 0.8, top-k 40; prompt: the start of a validation "
         "document):")
    echo(SAMPLE_RULE)
    sample_text(model, tok, prep.sample_prompt, max_new_tokens=max(1, chars // per_token),
                temperature=0.8, top_k=40, seed=seed)
    echo(SAMPLE_RULE)

