"""What `attnkit compare` measures, against hand-computed values: the training time axis,
peak memory of known allocations, decoding throughput, task metrics."""

import math

import pytest
import torch

from attnkit.commands.compare_measure import (
    decode_speed,
    peak_memory,
    task_metrics,
    train_step_peak,
    train_time_axis,
    train_tokens_per_s,
)
from attnkit.data.synthetic import CopyBatches
from attnkit.models import CausalLM, CausalLMConfig


def test_train_time_axis_from_the_trainer_records():
    records = [
        {"kind": "train", "step": 10, "tokens_seen": 1000, "tokens_per_s": 500.0},  # 2 s
        {"kind": "eval", "step": 10, "val_loss": 1.0},
        {"kind": "train", "step": 20, "tokens_seen": 2000, "tokens_per_s": 250.0},  # +4 s
        {"kind": "train", "step": 30, "tokens_seen": 3000, "tokens_per_s": 1000.0},  # +1 s
    ]
    assert train_time_axis(records) == {10: 2.0, 20: 6.0, 30: 7.0}
    assert train_tokens_per_s(records) == pytest.approx(3000 / 7.0)
    assert train_time_axis([]) == {} and train_tokens_per_s([]) is None


def test_peak_memory_of_known_allocations():
    mib = 1 << 20

    def two_live_then_one():
        a = torch.empty(mib // 4)  # fp32: 1 MiB
        b = torch.empty(mib // 2)  # 2 MiB: 3 MiB live here
        del a, b
        return torch.empty(mib // 4)

    peak = peak_memory(two_live_then_one, torch.device("cpu"))
    assert peak == 3 * mib
    # a uint8 sum accumulates in int64: an 8-byte copy of every element is live at once
    x = torch.ones(mib, dtype=torch.uint8)
    assert peak_memory(lambda: x.sum(), torch.device("cpu")) >= 8 * mib


def _tiny_model(seq_len=17, vocab=12):
    torch.manual_seed(0)
    return CausalLM(CausalLMConfig(vocab_size=vocab, max_seq_len=seq_len, d_model=16,
                                   n_layers=1, n_heads=2))


def test_train_step_peak_counts_weights_gradients_and_adam_state():
    model = _tiny_model()
    src = CopyBatches(8, 4, 0, seq_len=17, vocab_size=12)
    n = sum(p.numel() for p in model.parameters())
    peak = train_step_peak(model, src.next_batch())
    # weights, their gradients and AdamW's two moments (fp32) are live together
    assert peak >= 4 * 4 * n
    # the model itself is untouched (the step ran on a copy)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_step_peak(model, src.next_batch())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_decode_speed_and_task_metrics():
    model = _tiny_model().eval()
    prompt = torch.randint(2, 12, (2, 4))
    rate = decode_speed(model, prompt, 8)
    assert rate is not None and rate > 0
    assert decode_speed(model, prompt, 1) is None
    val = CopyBatches(12, 5, 0, seq_len=17, vocab_size=12, split="val", shuffle=False)
    m = task_metrics(model, val)
    assert m["examples"] == 12 and m["answers"] == 12 * 8
    assert 0 <= m["accuracy"] <= 1 and m["val_ppl"] == pytest.approx(math.exp(m["val_loss"]))
    # the mean answer loss is the token-weighted mean of the batch losses (5 + 5 + 2 rows)
    with torch.no_grad():
        losses = [(float(model(**b).loss), int((b["labels"][:, 1:] != -100).sum()))
                  for b in val.eval_batches()]
    want = sum(x * n for x, n in losses) / sum(n for _, n in losses)
    assert m["val_loss"] == pytest.approx(want, rel=1e-6)
