"""A multi-process smoke run: a tiny :class:`~attnkit.models.CausalLM` trained for a few steps
on a deterministic random-token stream, each rank reading its shard of the same global
batches — so the result must match one process reading whole global batches::

    torchrun --standalone --nproc_per_node=2 -m attnkit.train.distributed_smoke \\
        --mode ddp --out /tmp/smoke-ddp          # Gloo on CPU; --device cuda for NCCL

Rank 0 writes ``summary.json`` (and the usual ``metrics.jsonl``, ``last/``) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from attnkit.models.causal_lm import CausalLM, CausalLMConfig
from attnkit.train.config import TrainConfig
from attnkit.train.distributed import init_distributed
from attnkit.train.trainer import Trainer, TrainSummary

__all__ = ["RandomTokenSource", "smoke_model", "run"]


class RandomTokenSource:
    """Batch ``n`` of the global stream is ``randint(vocab, (batch_size, seq_len))`` from a
    generator seeded with ``(seed, n)``; rank ``r`` of ``w`` yields rows
    ``[r·b, (r+1)·b)`` with ``b = batch_size / w``. State: the batch counter."""

    def __init__(self, vocab_size: int, seq_len: int, batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by {world_size} ranks")
        self.vocab_size, self.seq_len, self.batch_size = vocab_size, seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.n = 0

    def _batch(self, n: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + n)
        x = torch.randint(self.vocab_size, (self.batch_size, self.seq_len), generator=g)
        b = self.batch_size // self.world_size
        x = x[self.rank * b:(self.rank + 1) * b]
        return {"input_ids": x, "labels": x.clone()}

    def next_batch(self) -> dict[str, Tensor]:
        self.n += 1
        return self._batch(self.n - 1)

    def eval_batches(self, max_batches: int) -> Iterator[dict[str, Tensor]]:
        for i in range(max_batches):
            yield self._batch(10**6 + i)

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = int(state["n"])


def smoke_model(seed: int = 0) -> CausalLM:
    """A 2-layer, d_model 32 causal LM (vocab 64, context 16, no dropout, tied head)."""
    torch.manual_seed(seed)
    return CausalLM(CausalLMConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layers=2,
                                   n_heads=2, d_ff=64))


def run(mode: str, out_dir: str | Path, *, steps: int = 4, global_batch: int = 8,
        grad_accum: int = 1, seq_len: int = 16, device: str = "cpu",
        split_at: int | None = None) -> TrainSummary:
    """Train the smoke model; ``mode`` is ``"none"``, ``"ddp"`` or ``"fsdp"``. With
    ``split_at`` the run stops after that step and a second trainer, built from fresh objects,
    resumes it from ``out_dir/last`` (the result must not change)."""
    info = init_distributed(mode, device)
    kw = dict(rank=info.rank, world_size=info.world_size)

    def sources() -> tuple[RandomTokenSource, RandomTokenSource]:
        return (RandomTokenSource(64, seq_len, global_batch, seed=1, **kw),
                RandomTokenSource(64, seq_len, global_batch, seed=2, **kw))

    cfg = TrainConfig(steps=steps, batch_size=global_batch // info.world_size,
                      grad_accum=grad_accum, lr=1e-3, min_lr=1e-4, warmup_steps=1,
                      eval_every=steps, eval_batches=2, save_every=0, log_every=1,
                      out_dir=str(out_dir), distributed=mode, device=device, precision="fp32",
                      progress=False)
    if split_at is not None:
        Trainer(smoke_model(), *sources(), cfg).train(max_steps=split_at)
        trainer = Trainer(smoke_model(seed=1), *sources(), cfg.replace(resume=True))
    else:
        trainer = Trainer(smoke_model(), *sources(), cfg)
    summary = trainer.train()
    trainer.close()
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("none", "ddp", "fsdp"), default="ddp")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--split-at", type=int, default=None,
                    help="stop after this step and resume from the checkpoint in a new trainer")
    a = ap.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    s = run(a.mode, a.out, steps=a.steps, global_batch=a.global_batch, grad_accum=a.grad_accum,
            device=a.device, split_at=a.split_at)
    if rank == 0:
        (Path(a.out) / "summary.json").write_text(json.dumps(s.to_dict(), indent=2) + "\n")


if __name__ == "__main__":
    main()
