"""What ``attnkit compare`` measures on a trained model: answer accuracy on a synthetic task,
decoding throughput, the peak memory of a training step and of decoding, and the training
curve's time axis.

Peak memory is the bytes of live tensors at the high-water mark: on CUDA the caching
allocator's ``max_memory_allocated`` during the call; on CPU the running sum of the
allocations and frees that ``torch.profiler`` records (``profile_memory=True``: every
tensor the CPU allocator hands out, workspaces included), both counted from just before the
call, plus the model's own parameters and buffers (allocated before it).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["task_metrics", "decode_speed", "peak_memory", "train_step_peak", "decode_peak",
           "train_time_axis", "train_tokens_per_s"]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def task_metrics(model: nn.Module, source: Any, max_batches: int | None = None
                 ) -> dict[str, float | int]:
    """Answer accuracy, exact match and mean loss over the answers of a synthetic task's
    validation examples (``source.eval_batches``)."""
    from attnkit.data.synthetic import AnswerAccuracy, answer_accuracy
    from attnkit.train.losses import count_targets

    dev = _device(model)
    was_training = model.training
    model.eval()
    acc = AnswerAccuracy()
    loss_sum = 0.0
    try:
        for b in source.eval_batches(max_batches):
            b = {k: v.to(dev) for k, v in b.items()}
            out = model(**b)
            acc = acc + answer_accuracy(out.logits, b["labels"])
            loss_sum += float(out.loss) * float(count_targets(model, b))
    finally:
        model.train(was_training)
    if not acc.answers:
        raise ValueError("the validation examples have no answers")
    loss = loss_sum / acc.answers
    return {"accuracy": acc.accuracy, "exact_match": acc.exact_match, "val_loss": loss,
            "val_ppl": math.exp(loss) if loss < 700 else math.inf, "answers": acc.answers,
            "examples": acc.examples}


def _decode_fn(model: nn.Module, prompt: torch.Tensor, new_tokens: int,
               stream: Callable[[int, list[int]], None] | None) -> Callable[[], Any]:
    from attnkit.generate import generate, generate_seq2seq
    from attnkit.sampling import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=new_tokens, eos_token_id=())
    if getattr(model.config, "family", None) == "seq2seq":
        return lambda: generate_seq2seq(model, prompt, None, cfg, stream=stream)
    return lambda: generate(model, prompt, cfg, stream=stream)


def decode_speed(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> float | None:
    """Greedy decoding throughput with the model's cache, in generated tokens per second
    over the incremental steps: from the first new token (after the prefill of ``prompt (B,
    P)``) to the last, ``B · (new_tokens - 1)`` tokens. One warm-up call first. None when
    ``new_tokens < 2``."""
    if new_tokens < 2:
        return None
    prompt = prompt.to(_device(model))
    B = prompt.shape[0]
    _decode_fn(model, prompt, 2, None)()  # warm-up
    stamps: list[float] = []

    def stream(row: int, tokens: list[int]) -> None:
        if row == B - 1:  # the last row of each step: that step's tokens are out
            stamps.append(time.perf_counter())

    _decode_fn(model, prompt, new_tokens, stream)()
    if len(stamps) < 2 or stamps[-1] <= stamps[0]:
        return None
    return B * (len(stamps) - 1) / (stamps[-1] - stamps[0])


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start/stop log lines)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _static_bytes(model: nn.Module) -> int:
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Bytes of live tensors at the high-water mark of ``fn()``, counted from just before it
    (see the module docstring); None if it cannot be measured here."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    if device.type != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    try:
        with _quiet_stderr():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
        events = prof.profiler.kineto_results.events()
        allocs = sorted((e.start_ns(), e.nbytes()) for e in events
                        if e.name() == "[memory]"
                        and e.device_type() == torch.autograd.DeviceType.CPU)
    except (AttributeError, RuntimeError):  # a profiler without memory events
        return None
    current = peak = 0
    for _, nbytes in allocs:
        current += nbytes
        peak = max(peak, current)
    return peak


def train_step_peak(model: nn.Module, batch: dict[str, torch.Tensor], lr: float = 1e-3
                    ) -> int | None:
    """Peak bytes of one training step (forward, backward, AdamW step with its state) of a
    copy of ``model`` on ``batch``: the copy's parameters and buffers plus what the step
    allocates above them."""
    from attnkit.train.losses import compute_loss
    from attnkit.train.optim import make_optimizer

    twin = copy.deepcopy(model).train()
    dev = _device(twin)
    batch = {k: v.to(dev) for k, v in batch.items()}
    opt = make_optimizer(twin, lr, 0.1, (0.9, 0.95))

    def step() -> None:
        loss = compute_loss(twin, twin, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    peak = peak_memory(step, dev)
    return None if peak is None else _static_bytes(twin) + peak


def decode_peak(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> int | None:
    """Peak bytes of greedy decoding ``new_tokens`` tokens after ``prompt`` (caches,
    logits, activations) plus the model's parameters and buffers."""
    if new_tokens < 1:
        return None
    dev = _device(model)
    peak = peak_memory(_decode_fn(model, prompt.to(dev), new_tokens, None), dev)
    return None if peak is None else _static_bytes(model) + peak


# ---- the training curve ---------------------------------------------------------------------


def train_time_axis(records: list[dict[str, Any]]) -> dict[int, float]:
    """Step -> seconds of training up to that step, from a ``metrics.jsonl``'s train
    records: each covers the steps since the previous one, at its ``tokens_per_s`` over
    ``tokens_seen`` minus the previous record's (evaluation and checkpoint time excluded, as
    the trainer measures it). Accumulates across resumed runs."""
    out: dict[int, float] = {}
    t = 0.0
    tokens = 0
    for r in records:
        if r.get("kind") != "train":
            continue
        seen, rate = r.get("tokens_seen"), r.get("tokens_per_s")
        if seen is None or not rate:
            continue
        t += max(0, seen - tokens) / rate
        tokens = seen
        out[int(r["step"])] = t
    return out


def train_tokens_per_s(records: list[dict[str, Any]]) -> float | None:
    """Training throughput over the whole run: tokens seen / training seconds."""
    axis = train_time_axis(records)
    if not axis:
        return None
    last = max(axis)
    seen = next(r["tokens_seen"] for r in reversed(records)
                if r.get("kind") == "train" and r.get("step") == last)
    return seen / axis[last] if axis[last] > 0 else None
