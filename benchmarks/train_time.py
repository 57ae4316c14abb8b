#!/usr/bin/env python
"""Validation loss in equal wall time: the default run's model (``char-gpt``) trained for the
same number of seconds by attnkit (``precision="auto"``: bf16 autocast on CPUs with native
bf16) and by the fp32 paths — attnkit fp32 and the HF GPT-2 peer — on the built-in corpus.

When precisions differ, loss per step is not the fair measure (bf16 rounds; a faster step
buys more steps); loss at equal time is. Each variant gets ``--seconds`` of training-step
time:

1. calibration: ``--calib`` steps of each (throwaway copies, interleaved) give its step time
   ``t``; its run is then sized to ``n = seconds / t`` steps and its learning-rate schedule
   (linear warmup, cosine to ``min_lr``) spans those ``n`` steps;
2. the runs, interleaved one step at a time (so load on a shared machine hits all alike),
   each until it has done its ``n`` steps or spent its seconds, whichever comes first;
3. every model's validation loss on the same windows of the validation split (eval mode,
   fp32, mean next-token cross-entropy).

All models start from the same weights (HF GPT-2's init, loaded into attnkit) and read the
same batches in the same order; hyper-parameters are the default run's (batch 12, context
64, peak lr 3e-3, min_lr 3e-4, warmup 10% up to 100 steps, betas (0.9, 0.99), weight decay
0.1, clipping 1.0, dropout 0.1). ``x-transformers`` (its own init) on request.

    python benchmarks/train_time.py                  # 60 s per variant, 2 threads
    python benchmarks/train_time.py --seconds 120 --variants attnkit,hf-gpt2
    python benchmarks/train_time.py --quick          # smoke run
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _corpus  # noqa: E402
import _peers  # noqa: E402
import _timing  # noqa: E402

VARIANTS = ("attnkit", "attnkit-fp32", "attnkit-compile", "hf-gpt2", "x-transformers")
DEFAULT_VARIANTS = ("attnkit", "attnkit-fp32", "hf-gpt2")
FP32_PEER = "hf-gpt2"
LR, MIN_LR, BETAS = 3e-3, 3e-4, _peers.BETAS  # the default run's (betas: (0.9, 0.99))


@dataclass
class Row:
    variant: str
    what: str = ""
    calib_ms: float | None = None
    planned_steps: int | None = None
    steps: int = 0
    train_s: float = 0.0
    ms: float | None = None
    val_loss: float | None = None
    final_train_loss: float | None = None
    status: str = "ok"
    reason: str = ""


class Run:
    """One variant: ``step() -> loss tensor``, ``val_loss(batches) -> float``."""

    def __init__(self, name: str, step: Callable[[], torch.Tensor], model: nn.Module,
                 loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor], what: str,
                 closer: Callable[[], None] | None = None):
        self.name, self.step, self.model, self.loss_fn = name, step, model, loss_fn
        self.what, self.closer = what, closer

    @torch.no_grad()
    def val_loss(self, batches: list[torch.Tensor]) -> float:
        was = self.model.training
        self.model.eval()
        total = sum(float(self.loss_fn(self.model, x)) for x in batches)
        self.model.train(was)
        return total / len(batches)


def _warmup_steps(steps: int) -> int:
    return min(100, steps // 10)


def build_run(name: str, steps: int, shape: dict, corpus, hf_init: nn.Module,
              twin_init: nn.Module, cfg, tmp: str) -> Run:
    data = corpus.batches("train", cfg.batch, cfg.context, seed=cfg.seed)
    if name.startswith("attnkit"):
        from attnkit.train import TrainConfig, Trainer

        model = copy.deepcopy(twin_init)
        tc = TrainConfig(steps=steps, batch_size=cfg.batch, lr=LR, min_lr=MIN_LR,
                         warmup_steps=_warmup_steps(steps), betas=BETAS, weight_decay=0.1,
                         grad_clip=1.0, precision="fp32" if name == "attnkit-fp32" else "auto",
                         compile=name == "attnkit-compile", device="cpu", progress=False,
                         eval_every=0, save_every=0, log_every=10**9,
                         out_dir=os.path.join(tmp, f"{name}-{steps}"))
        trainer = Trainer(model, data, None, tc)
        trainer.raw_model.train()

        def step() -> torch.Tensor:
            trainer._train_step()
            loss = trainer._loss_sum.clone()
            trainer._loss_sum.zero_()
            trainer._loss_count = 0
            return loss

        from attnkit.train.precision import autocast_dtype

        got = autocast_dtype(tc.precision, torch.device("cpu"))
        what = (f"Trainer, precision={tc.precision}"
                + (f" → {'bf16' if got is torch.bfloat16 else 'fp32'}"
                   if tc.precision == "auto" else "") + (", compile" if tc.compile else ""))
        return Run(name, step, model, lambda m, x: m(x, labels=x).loss, what, trainer.close)
    if name == "hf-gpt2":
        model = copy.deepcopy(hf_init)
        loss_fn = lambda m, x: m(input_ids=x, labels=x).loss  # noqa: E731
    else:
        model, loss_fn = _peers.build_peer(name, shape, cfg.seed)
        # dropout where x-transformers has it: embeddings and feed-forward
        for mod in model.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = cfg.dropout
    loop = _peers.PeerLoop(model, loss_fn, lambda: data.next_batch()["input_ids"],
                           optimizer=cfg.peer_optimizer, total_steps=steps, lr=LR,
                           min_lr=MIN_LR, warmup=_warmup_steps(steps))
    what = (f"{'GPT2LMHeadModel' if name == 'hf-gpt2' else 'TransformerWrapper'}, fp32, "
            f"AdamW {_peers.optimizer_kind(loop.opt)}")
    return Run(name, loop.step, model, loss_fn, what)


def run_benchmarks(cfg: argparse.Namespace, log: Callable[[str], None] | None = None) -> dict:
    if log is None:
        def log(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)
    names = [v.strip() for v in cfg.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise SystemExit(f"error: unknown variants {bad}; valid: {', '.join(VARIANTS)}")
    old = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    meta: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(),
        "device": _timing.device_desc(torch.device("cpu")), "threads": cfg.threads,
        "cpu_count": os.cpu_count(), "loadavg_at_start": _timing.loadavg(),
        "command": cfg.command, "seconds": cfg.seconds, "calib": cfg.calib,
        "val_batches": cfg.val_batches, "interrupted": False,
    }
    rows = [Row(n) for n in names]
    t0 = time.perf_counter()
    runs: list[Run] = []
    try:
        corpus = _corpus.char_corpus()
        meta["corpus"] = (f"{corpus.documents} documents, {corpus.characters:,} characters, "
                          f"vocab {corpus.vocab_size}")
        shape = dict(layers=cfg.layers, d_model=128, heads=4, vocab=corpus.vocab_size,
                     seq_len=cfg.context)
        # char-gpt's dropout placement: embeddings and residual branches, not attention
        hf_init = _peers.hf_gpt2(shape, cfg.seed, "gelu", cfg.dropout)
        with tempfile.TemporaryDirectory(prefix="attnkit-bench-time-") as tmp:
            twin = _peers.attnkit_twin(hf_init, _peers.scratch_dir(tmp, "hf"))
            assert twin.config.dropout == cfg.dropout and twin.config.attn_dropout == 0.0
            val = [b["input_ids"] for b in corpus.batches("val", cfg.batch, cfg.context)
                   .eval_batches(cfg.val_batches)]
            # 1. calibration
            calib = [build_run(n, 10**6, shape, corpus, hf_init, twin, cfg, tmp)
                     for n in names]
            times: list[list[float]] = [[] for _ in names]
            for k in range(cfg.calib + 2):
                for i, r in enumerate(calib):
                    t1 = time.perf_counter()
                    r.step()
                    if k >= 2:  # the first two steps warm up (compile, allocator)
                        times[i].append(time.perf_counter() - t1)
            for row, ts, r in zip(rows, times, calib, strict=True):
                row.calib_ms = statistics.median(ts) * 1e3
                row.planned_steps = max(1, int(cfg.seconds / statistics.median(ts)))
                if r.closer:
                    r.closer()
            del calib
            log("calibrated: " + ", ".join(f"{r.variant} {r.calib_ms:.1f} ms/step -> "
                                           f"{r.planned_steps} steps" for r in rows))
            # 2. the runs, interleaved
            runs = [build_run(r.variant, r.planned_steps, shape, corpus, hf_init, twin, cfg,
                              tmp) for r in rows]
            for row, run in zip(rows, runs, strict=True):
                row.what = run.what
            active = list(range(len(runs)))
            last_log = time.perf_counter()
            while active:
                for i in list(active):
                    t1 = time.perf_counter()
                    loss = runs[i].step()
                    rows[i].train_s += time.perf_counter() - t1
                    rows[i].steps += 1
                    rows[i].final_train_loss = float(loss)
                    if rows[i].steps >= rows[i].planned_steps or rows[i].train_s >= cfg.seconds:
                        active.remove(i)
                if time.perf_counter() - last_log > 15:
                    last_log = time.perf_counter()
                    log(", ".join(f"{r.variant}: step {r.steps}/{r.planned_steps} "
                                  f"({r.train_s:.0f} s) loss {r.final_train_loss:.3f}"
                                  for r in rows))
            # 3. validation
            for row, run in zip(rows, runs, strict=True):
                row.ms = row.train_s / max(row.steps, 1) * 1e3
                row.val_loss = run.val_loss(val)
                log(f"{row.variant}: {row.steps} steps in {row.train_s:.1f} s, val loss "
                    f"{row.val_loss:.4f}")
                if run.closer:
                    run.closer()
    except KeyboardInterrupt:
        meta["interrupted"] = True
    finally:
        torch.set_num_threads(old)
    meta["loadavg_at_end"] = _timing.loadavg()
    meta["total_s"] = round(time.perf_counter() - t0, 1)
    return {"meta": meta, "rows": rows}


def render(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    out = [
        f"torch {meta['torch']} | device: {meta['device']} | threads {meta['threads']} | "
        f"loadavg (1/5/15 min) {meta['loadavg_at_start']} → {meta['loadavg_at_end']} | "
        f"command: `{meta['command']}`",
        "",
        f"char-gpt (4 layers, d=128, 4 heads, context 64, batch 12) on the built-in corpus "
        f"({meta.get('corpus')}), {meta['seconds']:g} s of training steps per variant "
        f"(schedule sized from {meta['calib']} calibration steps), interleaved; validation: "
        f"the same {meta['val_batches']} windows × 12 for every model. Δ val = val loss − "
        f"{FP32_PEER}'s (< 0: better).",
        "",
        "| variant | training | ms/step | steps | seconds | final train loss | val loss | "
        "Δ val vs fp32 peer |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    peer = next((r for r in rows if r.variant == FP32_PEER and r.val_loss is not None), None)
    for r in rows:
        if r.val_loss is None:
            out.append(f"| {r.variant} | {r.what} | - | {r.steps} | - | - | - | - |")
            continue
        d = "-" if peer is None or r is peer else f"{r.val_loss - peer.val_loss:+.4f}"
        out.append(f"| {r.variant} | {r.what} | {r.ms:.1f} | {r.steps} | {r.train_s:.1f} | "
                   f"{r.final_train_loss:.4f} | {r.val_loss:.4f} | {d} |")
    ours = next((r for r in rows if r.variant == "attnkit" and r.val_loss is not None), None)
    if ours is not None and peer is not None:
        ok = ours.val_loss <= peer.val_loss
        out += ["", f"Target (equal-or-better validation loss than the fp32 peer in equal "
                f"wall time): attnkit {ours.val_loss:.4f} vs {FP32_PEER} {peer.val_loss:.4f} "
                f"({ours.steps} vs {peer.steps} steps) — " + ("met." if ok else "NOT met.")]
    if any(r.val_loss is not None and not math.isfinite(r.val_loss) for r in rows):
        out.append("WARNING: a non-finite validation loss.")
    out += ["", _timing.total_line(meta)]
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--quick", action="store_true", help="smoke run: 1 layer, 2 s, 3 calibration steps")
    a("--variants", default=",".join(DEFAULT_VARIANTS),
      help=f"comma list of {','.join(VARIANTS)} (default: %(default)s)")
    a("--seconds", type=float, default=60.0,
      help="training-step seconds per variant (default: %(default)s)")
    a("--calib", type=int, default=20, help="calibration steps per variant (default: "
      "%(default)s)")
    a("--val-batches", type=int, default=50, help="validation batches of 12 windows "
      "(default: %(default)s)")
    a("--layers", type=int, default=4, help=argparse.SUPPRESS)
    a("--context", type=int, default=64, help=argparse.SUPPRESS)
    a("--batch", type=int, default=12, help=argparse.SUPPRESS)
    a("--dropout", type=float, default=0.1, help="dropout (default: %(default)s, char-gpt's)")
    a("--peer-optimizer", choices=_peers.PEER_OPTIMIZERS, default="fused",
      help="the peers' AdamW (default: %(default)s)")
    a("--threads", type=int, default=2, help="torch.set_num_threads (default: %(default)s)")
    a("--seed", type=int, default=0)
    a("--json", metavar="PATH", default=None, help="also write results as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    def run(cfg):
        if cfg.quick:
            cfg.layers, cfg.seconds, cfg.calib, cfg.val_batches = 1, 2.0, 3, 2
        return run_benchmarks(cfg)

    return _timing.run_script(argv, "benchmarks/train_time.py", build_parser(), run, render)


if __name__ == "__main__":
    raise SystemExit(main())
