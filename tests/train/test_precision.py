"""Mixed precision: choosing the autocast dtype from the CPU, and bf16 training that tracks fp32.

The loss-curve test trains the same tiny character model on the same batches twice — fp32 and
bf16 autocast (fp32 master weights, no loss scaling) — and requires every logged training
loss (a 10-step mean) of the bf16 run to be within ``CURVE_TOL`` nats of the fp32 run's,
while both runs learn (loss falls by more than 1 nat). Measured gap: ≤ 0.006 nats over 300
steps; the tolerance is 0.02.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnkit.models import CausalLM, CausalLMConfig
from attnkit.train import TrainConfig, Trainer
from attnkit.train import precision as P
from attnkit.train.metrics import read_metrics

CURVE_TOL = 0.02  # nats, per logged 10-step mean loss

CPUINFO = """processor\t: 0
model name\t: Some CPU
flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile
processor\t: 1
flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile
"""


def test_cpu_flags_are_read_from_cpuinfo():
    assert P.cpu_bf16_flags(CPUINFO) == ("avx512_bf16", "amx_bf16")
    assert P.cpu_bf16_flags(CPUINFO.replace(" amx_bf16", "")) == ("avx512_bf16",)
    assert P.cpu_bf16_flags("flags\t: fpu sse avx2 avx512f\n") == ()
    assert P.cpu_bf16_flags("") == ()
    # an unrelated flag that merely contains the name does not count
    assert P.cpu_bf16_flags("flags\t: xavx512_bf16x\n") == ()


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_exactly_when_the_cpu_computes_bf16(monkeypatch, native):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert P.autocast_dtype("auto", cpu) is (torch.bfloat16 if native else None)
    assert P.autocast_dtype("fp32", cpu) is None
    assert P.autocast_dtype("bf16", cpu) is torch.bfloat16
    assert P.autocast_dtype("fp16", cpu) is torch.float16
    line = P.describe("auto", cpu)
    assert line.startswith("bf16 autocast, fp32 master weights (auto:" if native else "fp32")


def test_unknown_precision_is_an_error():
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        P.autocast_dtype("fp8", torch.device("cpu"))


def test_loss_scaling_only_for_fp16():
    assert P.needs_loss_scaling(torch.float16)
    assert not P.needs_loss_scaling(torch.bfloat16) and not P.needs_loss_scaling(None)


# ---- training ------------------------------------------------------------------------------

TEXT = Path(json.__file__).read_text()  # a few kB of real text, the same on every run
CHARS = sorted(set(TEXT))
IDS = torch.tensor([CHARS.index(c) for c in TEXT])
SEQ, BATCH = 32, 8


class TextWindows:
    """Random windows of ``TEXT`` from a seeded generator (the same batches for both runs)."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        self.n = 0

    def next_batch(self):
        starts = torch.randint(len(IDS) - SEQ, (BATCH,), generator=self.gen).tolist()
        x = torch.stack([IDS[s:s + SEQ] for s in starts])
        self.n += 1
        return {"input_ids": x, "labels": x}

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def _curve(precision: str, out: Path, steps: int = 200) -> tuple[list[float], Trainer]:
    torch.manual_seed(0)
    model = CausalLM(CausalLMConfig(vocab_size=len(CHARS), max_seq_len=SEQ, d_model=64,
                                    n_layers=2, n_heads=2, activation="gelu"))
    tc = TrainConfig(steps=steps, batch_size=BATCH, lr=3e-3, min_lr=3e-4, warmup_steps=10,
                     eval_every=0, save_every=0, log_every=10, out_dir=str(out), device="cpu",
                     precision=precision, progress=False, seed=1)
    trainer = Trainer(model, TextWindows(0), None, tc)
    trainer.train()
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    return losses, trainer


def test_bf16_loss_curve_tracks_fp32(tmp_path):
    fp32, _ = _curve("fp32", tmp_path / "fp32")
    bf16, trainer = _curve("bf16", tmp_path / "bf16")
    assert trainer.amp_dtype is torch.bfloat16 and not trainer.scaler.is_enabled()
    assert all(p.dtype == torch.float32 for p in trainer.raw_model.parameters())
    assert len(fp32) == len(bf16) == 20
    assert fp32[0] - fp32[-1] > 1.0 and bf16[0] - bf16[-1] > 1.0  # both learn
    gaps = [abs(a - b) for a, b in zip(fp32, bf16, strict=True)]
    assert max(gaps) <= CURVE_TOL, gaps
    assert fp32 != bf16  # the runs did compute in different precisions


def test_trainer_auto_precision_follows_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    _, trainer = _curve("auto", tmp_path / "auto", steps=2)
    assert trainer.amp_dtype is torch.bfloat16 and not trainer.scaler.is_enabled()
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    _, trainer = _curve("auto", tmp_path / "auto2", steps=2)
    assert trainer.amp_dtype is None
