#!/usr/bin/env python
"""Benchmark a full training step of a char-level GPT: attnkit against a nanoGPT baseline.

One step = fetch a batch, forward, loss, backward, gradient clipping (1.0), AdamW step,
``zero_grad(set_to_none=True)``. Variants, all timed in the same run, sampled round-robin
(A B C A B C ...) so drift of a shared machine hits them alike:

* ``nanogpt`` — the baseline: a minimal nanoGPT written inline (Karpathy's ``model.py`` /
  ``train.py``): separate ``LayerNorm`` modules with bias, fused ``c_attn`` Linear,
  ``F.scaled_dot_product_attention(is_causal=True)``, GELU MLP, learned positions, tied
  embeddings, dropout 0; ``configure_optimizers`` (decay on every >= 2-D tensor; AdamW
  ``fused=True`` only on CUDA, so on CPU torch's default single-tensor loop); nanoGPT's loop
  (lr set per iteration, a disabled ``GradScaler``, ``loss.item()`` every step as with
  ``--log_interval=1``); no ``torch.compile`` (its README's CPU command). This is the stand-in,
  on this machine, for the "~100 ms/iteration reference implementation" figure.
* ``attnkit`` — :class:`attnkit.models.CausalLM` (``char-gpt`` shapes) + ``make_optimizer``
  (fused AdamW on CPU too) + ``WarmupCosine`` + ``clip_grad_norm`` in an inline loop, eager.
* ``attnkit-trainer`` — the same model through the real :class:`attnkit.train.Trainer` step
  (``Trainer._train_step``: batch source, target-count weighting, loss accumulator, the
  per-step state snapshot), eager.
* ``attnkit-compile`` — ``Trainer`` with ``TrainConfig(compile=True)``.
* optional: ``nanogpt-fused`` (the baseline with fused AdamW), ``nanogpt-compile``,
  ``attnkit-compile-loop`` (the inline loop over ``torch.compile(model)``).

Every model starts from the *same weights* (the baseline's init, copied into attnkit) and the
run checks that both compute the same loss on the same batch before timing. The attnkit
models use ``activation`` / ``bias`` as the baseline does (``--activation``, ``--bias``).

Shapes: ``char`` is nanoGPT's Shakespeare-char CPU recipe (4 layers, 4 heads, d=128,
context 64, batch 12, vocab 65); ``gpt2`` is GPT-2 small (12 layers, d=768, 12 heads,
vocab 50257) at context 256, batch 1 — a few iterations only (``--no-gpt2`` skips it). On
CUDA the table adds MFU = flops_per_token x tokens/s / peak FLOP/s (``--peak-tflops``, or a
default by GPU name and dtype; on CPU only when the flag is given).

    python benchmarks/train.py                      # both shapes, default variants
    python benchmarks/train.py --no-gpt2 --json train.json
    python benchmarks/train.py --quick              # smoke run
    python benchmarks/train.py --no-gpt2 --profile 20   # + torch.profiler op tables
"""

from __future__ import annotations

import argparse
import gc
import inspect
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

SHAPES = {
    # nanoGPT README, "I only have a macbook": train_shakespeare_char.py --device=cpu
    # --compile=False --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
    # --dropout=0.0 (vocabulary: the 65 characters of tiny Shakespeare).
    "char": dict(layers=4, d_model=128, heads=4, vocab=65, batch=12, seq_len=64),
    "gpt2": dict(layers=12, d_model=768, heads=12, vocab=50257, batch=1, seq_len=256),
}
TITLES = {"char": "char GPT", "gpt2": "GPT-2 small"}
QUICK = {"char": dict(), "gpt2": dict(layers=2, seq_len=64)}
VARIANTS = ("nanogpt", "nanogpt-fused", "nanogpt-compile", "attnkit", "attnkit-trainer",
            "attnkit-compile", "attnkit-compile-loop")
DEFAULT_VARIANTS = ("nanogpt", "attnkit", "attnkit-trainer", "attnkit-compile")
BASELINE = "nanogpt"
# Dense peak TFLOP/s (no sparsity) by GPU and compute dtype, for the MFU column.
PEAK_TFLOPS = {
    ("H100 SXM", "bf16"): 989.4, ("H100 SXM", "fp32"): 66.9,
    ("H100 PCIe", "bf16"): 756.0, ("H100 PCIe", "fp32"): 51.2,
    ("H200", "bf16"): 989.4, ("H200", "fp32"): 66.9,
    ("A100", "bf16"): 312.0, ("A100", "fp32"): 19.5,
}
# nanoGPT train_shakespeare_char.py hyper-parameters (the step's cost does not depend on them).
LR, MIN_LR, WARMUP, BETAS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, 1e-4, 100, (0.9, 0.99), 0.1, 1.0


# ---- the baseline: nanoGPT, minimal, inline -------------------------------------------------


class NLayerNorm(nn.Module):
    """nanoGPT's LayerNorm "with an optional bias"."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class NCausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool, dropout: float):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd, self.dropout = n_head, n_embd, dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class NMLP(nn.Module):
    def __init__(self, n_embd: int, bias: bool, dropout: float, approximate: str):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU(approximate=approximate)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class NBlock(nn.Module):
    def __init__(self, n_embd, n_head, bias, dropout, approximate):
        super().__init__()
        self.ln_1 = NLayerNorm(n_embd, bias)
        self.attn = NCausalSelfAttention(n_embd, n_head, bias, dropout)
        self.ln_2 = NLayerNorm(n_embd, bias)
        self.mlp = NMLP(n_embd, bias, dropout, approximate)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's ``GPT`` (model.py), trimmed to what a training step runs."""

    def __init__(self, vocab: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                 bias: bool = True, dropout: float = 0.0, approximate: str = "none"):
        super().__init__()
        self.block_size = block_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([NBlock(n_embd, n_head, bias, dropout, approximate)
                             for _ in range(n_layer)]),
            ln_f=NLayerNorm(n_embd, bias),
        ))
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        device = idx.device
        b, t = idx.size()
        assert t <= self.block_size, f"Cannot forward sequence of length {t}"
        pos = torch.arange(0, t, dtype=torch.long, device=device)
        tok_emb = self.transformer.wte(idx)
        pos_emb = self.transformer.wpe(pos)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                               ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type,
                             force_fused: bool = False):
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
        nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
        optim_groups = [{"params": decay_params, "weight_decay": weight_decay},
                        {"params": nodecay_params, "weight_decay": 0.0}]
        fused_available = "fused" in inspect.signature(torch.optim.AdamW).parameters
        use_fused = fused_available and (device_type == "cuda" or force_fused)
        extra_args = dict(fused=True) if use_fused else dict()
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)


def nanogpt_lr(it: int, lr_decay_iters: int = 5000) -> float:
    """nanoGPT's ``get_lr``: linear warmup, cosine decay to ``min_lr``."""
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > lr_decay_iters:
        return MIN_LR
    ratio = (it - WARMUP) / (lr_decay_iters - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def copy_nanogpt_into_attnkit(src: NanoGPT, dst: nn.Module) -> None:
    """Same weights in both models (both store Linear weights as (out, in))."""
    t, st = src.transformer, dst.stack
    pairs = [(t.wte.weight, dst.tok_emb.weight), (t.wpe.weight, dst.pos_emb.emb.weight)]
    for a, b in zip(t.h, st.layers, strict=True):
        pairs += [(a.ln_1, b.norm1), (a.attn.c_attn, b.attn.qkv), (a.attn.c_proj, b.attn.out_proj),
                  (a.ln_2, b.norm2), (a.mlp.c_fc, b.ffn.w1), (a.mlp.c_proj, b.ffn.w2)]
    pairs.append((t.ln_f, st.final_norm))
    with torch.no_grad():
        for a, b in pairs:
            if isinstance(a, torch.Tensor):
                b.copy_(a)
                continue
            b.weight.copy_(a.weight)
            if a.bias is not None:
                b.bias.copy_(a.bias)


# ---- data -------------------------------------------------------------------------------------


class Batches:
    """A pool of random (x, y) windows of a random token stream (nanoGPT's ``get_batch``:
    ``y`` is ``x`` shifted by one), made up front so no variant pays for data loading.
    Doubles as an attnkit ``BatchSource`` (``input_ids`` = ``labels`` = x: CausalLM shifts)."""

    def __init__(self, vocab: int, batch: int, seq_len: int, device: torch.device,
                 pool: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        data = torch.randint(0, vocab, (max(4096, 4 * pool * batch * (seq_len + 1)),),
                             generator=g)
        self.xy = []
        for _ in range(pool):
            ix = torch.randint(len(data) - seq_len - 1, (batch,), generator=g)
            x = torch.stack([data[i:i + seq_len] for i in ix])
            y = torch.stack([data[i + 1:i + 1 + seq_len] for i in ix])
            self.xy.append((x.to(device), y.to(device)))
        self.i = 0

    def next_xy(self) -> tuple[torch.Tensor, torch.Tensor]:
        xy = self.xy[self.i % len(self.xy)]
        self.i += 1
        return xy

    # attnkit BatchSource protocol
    def next_batch(self) -> dict[str, torch.Tensor]:
        x, _ = self.next_xy()
        return {"input_ids": x, "labels": x}

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = state["i"]


# ---- variants ---------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    step: Callable[[], Any]
    model: nn.Module
    what: str
    warmup_ms: list[float] = field(default_factory=list)
    closer: Callable[[], None] | None = None


def _autocast(device: torch.device, amp: torch.dtype | None):
    return nullcontext() if amp is None else torch.autocast(device.type, dtype=amp)


def build_nanogpt(name: str, s: dict, cfg, device, amp) -> Variant:
    torch.manual_seed(cfg.seed)
    model = NanoGPT(s["vocab"], s["seq_len"], s["layers"], s["heads"], s["d_model"],
                    bias=cfg.bias, dropout=0.0, approximate=_approx(cfg)).to(device)
    model.train()
    opt = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, device.type,
                                     force_fused=name == "nanogpt-fused")
    fwd = torch.compile(model) if name == "nanogpt-compile" else model
    # nanoGPT: torch.cuda.amp.GradScaler(enabled=(dtype == 'float16')); off for fp32 / bf16
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    data = Batches(s["vocab"], s["batch"], s["seq_len"], device, seed=cfg.seed)
    state = {"it": 0}

    def step():
        lr = nanogpt_lr(state["it"])
        for g in opt.param_groups:
            g["lr"] = lr
        X, Y = data.next_xy()
        with _autocast(device, amp):
            _, loss = fwd(X, Y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        state["it"] += 1
        return loss.item()  # nanoGPT logs every step (--log_interval=1)

    kind = "fused" if opt.defaults.get("fused") else (
        "foreach" if opt.defaults.get("foreach") else "default (single-tensor on CPU)")
    what = (f"nanoGPT inline, AdamW {kind}" + (", torch.compile" if fwd is not model else ""))
    return Variant(name, step, model, what)


def _approx(cfg) -> str:
    return "tanh" if cfg.activation == "gelu_tanh" else "none"


def _attnkit_model(s: dict, cfg, device, init_from: NanoGPT | None):
    from attnkit.models import CausalLM, CausalLMConfig

    mc = CausalLMConfig(vocab_size=s["vocab"], max_seq_len=s["seq_len"], d_model=s["d_model"],
                        n_layers=s["layers"], n_heads=s["heads"], dropout=0.0,
                        activation=cfg.activation, bias=cfg.bias)
    torch.manual_seed(cfg.seed)
    model = CausalLM(mc)
    if init_from is not None:
        copy_nanogpt_into_attnkit(init_from, model)
    return model.to(device).train()


def build_attnkit(name: str, s: dict, cfg, device, amp, init_from, tmp: str) -> Variant:
    from attnkit.train import TrainConfig, Trainer
    from attnkit.train.optim import WarmupCosine, clip_grad_norm, make_optimizer

    model = _attnkit_model(s, cfg, device, init_from)
    data = Batches(s["vocab"], s["batch"], s["seq_len"], device, seed=cfg.seed)
    if name in ("attnkit", "attnkit-compile-loop"):
        opt = make_optimizer(model, LR, WEIGHT_DECAY, BETAS)
        sched = WarmupCosine(opt, warmup_steps=WARMUP, total_steps=5000, min_lr=MIN_LR)
        fwd = torch.compile(model) if name == "attnkit-compile-loop" else model

        def step():
            x, _ = data.next_xy()
            with _autocast(device, amp):
                loss = fwd(x, labels=x).loss
            loss.backward()
            clip_grad_norm(model, GRAD_CLIP)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        kind = "fused" if opt.defaults.get("fused") else "foreach"
        what = f"CausalLM + make_optimizer (AdamW {kind}), inline loop" + (
            ", torch.compile" if fwd is not model else "")
        return Variant(name, step, model, what)

    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]
    tc = TrainConfig(steps=5000, batch_size=s["batch"], lr=LR, min_lr=MIN_LR,
                     warmup_steps=WARMUP, weight_decay=WEIGHT_DECAY, betas=BETAS,
                     grad_clip=GRAD_CLIP, precision=precision, compile=name == "attnkit-compile",
                     out_dir=os.path.join(tmp, name), device=str(device), progress=False,
                     eval_every=0, save_every=0, log_every=10**9)
    trainer = Trainer(model, data, None, tc)
    trainer.raw_model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    kind = "fused" if trainer.optimizer.defaults.get("fused") else "foreach"
    what = f"Trainer._train_step (AdamW {kind})" + (", compile=True" if tc.compile else "")
    return Variant(name, trainer._train_step, model, what, closer=trainer.close)


# ---- running ----------------------------------------------------------------------------------


@dataclass
class Row:
    shape: str
    variant: str
    what: str
    ms: float | None = None  # median wall-clock ms per step
    cpu_ms: float | None = None  # median process CPU ms per step (all threads)
    tokens_per_s: float | None = None
    speedup: float | None = None  # t(baseline) / t(variant): > 1 = faster than the baseline
    round_speedups: list[float] = field(default_factory=list)
    samples_ms: list[float] = field(default_factory=list)
    warmup_ms: list[float] = field(default_factory=list)
    mfu: float | None = None
    status: str = "ok"
    reason: str = ""
    profile: list[dict[str, Any]] | None = None


def _shape(cfg, name: str) -> dict[str, int]:
    s = dict(SHAPES[name])
    if cfg.quick:
        s.update(QUICK[name])
    for k in s:
        v = getattr(cfg, f"{name}_{k}", None)
        if v is not None:
            s[k] = v
    return s


def _sync(device: torch.device) -> Callable[[], None] | None:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def check_same_loss(s: dict, cfg, device, amp, base: NanoGPT) -> float:
    """|loss(nanoGPT) - loss(attnkit)| on one batch, same weights (targets of the last position
    dropped from nanoGPT's, since CausalLM cannot see token T + 1)."""
    ak = _attnkit_model(s, cfg, device, base)
    x, y = Batches(s["vocab"], s["batch"], s["seq_len"], device, seed=cfg.seed + 1).next_xy()
    y = y.clone()
    y[:, -1] = -1
    with torch.no_grad(), _autocast(device, amp):
        a = base(x, y)[1].float()
        b = ak(x, labels=x).loss.float()
    del ak
    return float((a - b).abs())


def time_interleaved(fns: list[Callable[[], Any]], rounds: int, sync: Callable[[], None] | None,
                     budget_s: float) -> tuple[list[list[float]], list[list[float]], str]:
    """Seconds per call of each fn, wall clock and process CPU time (all threads), sampled
    round-robin: one call of each per round, the starting fn rotating from round to round so
    no variant always runs right after the same other one. Stops early (after a whole round)
    once the rounds so far took ``budget_s``."""
    k = len(fns)
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    t_start = time.perf_counter()
    for rnd in range(max(1, rounds)):
        for j in range(k):
            i = (rnd + j) % k
            if sync is not None:
                sync()
            c0, t0 = time.process_time(), time.perf_counter()
            fns[i]()
            if sync is not None:
                sync()
            wall[i].append(time.perf_counter() - t0)
            cpu[i].append(time.process_time() - c0)
        if time.perf_counter() - t_start > budget_s and rnd < rounds - 1:
            return wall, cpu, f"stopped after {rnd + 1} rounds: budget {budget_s:g} s"
    return wall, cpu, ""


def profile_steps(fn: Callable[[], Any], top: int, calls: int) -> list[dict[str, Any]]:
    """Self-CPU ms per op over ``calls`` profiled steps (per-step average), top ``top``."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
    ka = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return [{"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1e3 / calls, 3),
             "calls_per_step": round(e.count / calls, 2)} for e in ka[:top]]


def run_shape(shape: str, cfg, device, amp, tmp: str, log) -> tuple[list[Row], dict]:
    s = _shape(cfg, shape)
    names = cfg.gpt2_variant_list if shape == "gpt2" else cfg.variant_list
    tokens = s["batch"] * s["seq_len"]
    info: dict[str, Any] = {"shape": s, "tokens_per_step": tokens}
    torch.manual_seed(cfg.seed)
    ref = NanoGPT(s["vocab"], s["seq_len"], s["layers"], s["heads"], s["d_model"],
                  bias=cfg.bias, dropout=0.0, approximate=_approx(cfg)).to(device)
    info["loss_diff"] = check_same_loss(s, cfg, device, amp, ref)
    from attnkit.models import CausalLM  # noqa: F401  (imported for flops_per_token below)

    probe = _attnkit_model(s, cfg, device, None)
    info["flops_per_token"] = probe.flops_per_token(s["seq_len"])
    info["params"] = probe.num_parameters()
    del probe
    log(f"[{shape}] {s}: {info['params']:,} parameters; same weights -> |Δ loss| = "
        f"{info['loss_diff']:.2g}")
    variants: list[Variant] = []
    rows: list[Row] = []
    sync = _sync(device)
    try:
        for name in names:
            row = Row(shape, name, "")
            try:
                v = (build_nanogpt(name, s, cfg, device, amp) if name.startswith("nanogpt")
                     else build_attnkit(name, s, cfg, device, amp, ref, tmp))
                row.what = v.what
                n_warm = ((cfg.gpt2_warmup if shape == "gpt2" else cfg.warmup)
                          + (cfg.compile_warmup if "compile" in name else 0))
                for _ in range(n_warm):
                    if sync:
                        sync()
                    t0 = time.perf_counter()
                    v.step()
                    if sync:
                        sync()
                    v.warmup_ms.append((time.perf_counter() - t0) * 1e3)
                row.warmup_ms = [round(t, 2) for t in v.warmup_ms]
                log(f"[{shape}] {name}: built, warm-up ms {row.warmup_ms}")
                variants.append(v)
            except Exception as e:  # report and go on
                row.status, row.reason = "error", f"{type(e).__name__}: {e}"
                log(f"[{shape}] {name}: ERROR {row.reason}")
            rows.append(row)
        ok = [r for r in rows if r.status == "ok"]
        if variants:
            log(f"[{shape}] timing {len(variants)} variants x {cfg.repeats(shape)} rounds, "
                "interleaved")
            wall, cpu, info["stopped"] = time_interleaved(
                [v.step for v in variants], cfg.repeats(shape), sync, cfg.budget_s)
            names_ok = [v.name for v in variants]
            base = wall[names_ok.index(BASELINE)] if BASELINE in names_ok else None
            for r, w, c in zip(ok, wall, cpu, strict=True):
                med = statistics.median(w)
                r.ms, r.cpu_ms = med * 1e3, statistics.median(c) * 1e3
                r.samples_ms = [round(x * 1e3, 3) for x in w]
                r.tokens_per_s = tokens / med
                if base is not None:
                    r.speedup = statistics.median(base) / med
                    r.round_speedups = [round(b / a, 3) for a, b in zip(w, base, strict=True)]
                if cfg.peak_flops:
                    r.mfu = info["flops_per_token"] * r.tokens_per_s / cfg.peak_flops
                log(f"[{shape}] {r.variant}: {r.ms:.2f} ms/iter (CPU {r.cpu_ms:.1f} ms), "
                    f"{r.tokens_per_s:,.0f} tok/s"
                    + (f", x{r.speedup:.2f} vs {BASELINE}" if r.speedup else ""))
            if cfg.profile:
                for r, v in zip(ok, variants, strict=True):
                    r.profile = profile_steps(v.step, cfg.profile, cfg.profile_calls)
    finally:
        for v in variants:
            if v.closer is not None:
                v.closer()
        del variants
        gc.collect()
    return rows, info


# ---- CLI --------------------------------------------------------------------------------------


def _csv(valid):
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in valid]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma list of {valid}, got {text!r}")
        return items

    return parse


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--quick", action="store_true",
      help="smoke run: 10 rounds; GPT-2 shapes cut to 2 layers at context 64")
    a("--variants", type=_csv(VARIANTS), default=list(DEFAULT_VARIANTS),
      help=f"char-GPT variants, comma list of {','.join(VARIANTS)} (default: "
      f"{','.join(DEFAULT_VARIANTS)})")
    a("--gpt2-variants", type=_csv(VARIANTS), default=None,
      help="GPT-2-small variants (default: nanogpt,attnkit-trainer on CPU, plus "
      "attnkit-compile on CUDA)")
    a("--shapes", type=_csv(tuple(SHAPES)), default=list(SHAPES),
      help="which runs: comma list of char,gpt2 (default: both)")
    a("--no-gpt2", action="store_true", help="skip the GPT-2-small run (= --shapes char)")
    for shape, prefix in (("char", "--"), ("gpt2", "--gpt2-")):
        for k, default in SHAPES[shape].items():
            a(prefix + k.replace("_", "-"), dest=f"{shape}_{k}", type=int, default=None,
              help=f"{TITLES[shape]}: {k} (default {default})")
    a("--activation", choices=("gelu", "gelu_tanh"), default="gelu",
      help="MLP activation of every model (default: %(default)s, nanoGPT's nn.GELU())")
    a("--bias", type=_bool, default=True,
      help="biases in Linear/LayerNorm of every model (default: %(default)s; nanoGPT's "
      "train.py defaults to False, the char-gpt preset to True)")
    a("--device", default="cpu", help="cpu | cuda | cuda:N (default: %(default)s)")
    a("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
      help="auto = fp32 on CPU, bf16 autocast on CUDA (nanoGPT's and Trainer's choice)")
    a("--threads", type=int, default=2, help="torch.set_num_threads (default: %(default)s)")
    a("--rounds", type=int, default=None,
      help="timed interleaved rounds for the char GPT (default 40; --quick 10)")
    a("--gpt2-rounds", type=int, default=None, help="timed rounds for GPT-2 (default 3)")
    a("--warmup", type=int, default=5,
      help="untimed warm-up steps per char-GPT variant (default: %(default)s)")
    a("--gpt2-warmup", type=int, default=1,
      help="untimed warm-up steps per GPT-2 variant (default: %(default)s)")
    a("--compile-warmup", type=int, default=3,
      help="extra warm-up steps for compiled variants (compilation, recompiles)")
    a("--budget-s", type=float, default=300.0,
      help="stop timing a shape (after a whole round) once its rounds took this long "
      "(default: %(default)s)")
    a("--peak-tflops", type=float, default=None,
      help="peak TFLOP/s for MFU (default on CUDA: by GPU name and dtype, "
      + ", ".join(f"{g} {d} {v:g}" for (g, d), v in PEAK_TFLOPS.items()) + "; on CPU: no MFU)")
    a("--profile", type=int, nargs="?", const=15, default=0, metavar="TOP",
      help="also torch.profiler the steps of each variant: TOP ops by self CPU time")
    a("--profile-calls", type=int, default=10, help="profiled steps per variant (default 10)")
    a("--seed", type=int, default=0)
    a("--json", metavar="PATH", default=None, help="also write results as JSON")
    return p


def _gpu_key(name: str) -> str | None:
    n = name.upper()
    if "H200" in n:
        return "H200"
    if "H100" in n:
        return "H100 PCIe" if "PCIE" in n else "H100 SXM"
    if "A100" in n:
        return "A100"
    return None


def finalize(cfg: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    cfg = argparse.Namespace(**vars(cfg))
    if getattr(cfg, "command", None) is None:
        cfg.command = _timing.command_line(None, "")
    cfg.variant_list = list(cfg.variants)
    if cfg.gpt2_variants is None:
        cfg.gpt2_variants = ["nanogpt", "attnkit-trainer"] + (
            ["attnkit-compile"] if device.type == "cuda" else [])
    cfg.gpt2_variant_list = list(cfg.gpt2_variants)
    char_rounds = cfg.rounds or (10 if cfg.quick else 40)
    gpt2_rounds = cfg.gpt2_rounds or 3
    cfg.repeats = lambda shape: gpt2_rounds if shape == "gpt2" else char_rounds
    cfg.dtype_name = (("bf16" if device.type == "cuda" else "fp32") if cfg.dtype == "auto"
                      else cfg.dtype)
    cfg.peak_source = None
    cfg.peak_flops = None
    if cfg.peak_tflops:
        cfg.peak_flops, cfg.peak_source = cfg.peak_tflops * 1e12, "--peak-tflops"
    elif device.type == "cuda":
        key = _gpu_key(torch.cuda.get_device_name(device))
        if key is not None:
            cfg.peak_flops = PEAK_TFLOPS[(key, cfg.dtype_name)] * 1e12
            cfg.peak_source = f"{key} {cfg.dtype_name} table"
    return cfg


def run_benchmarks(cfg: argparse.Namespace, log: Callable[[str], None] | None = None) -> dict:
    device = torch.device(cfg.device)
    cfg = finalize(cfg, device)
    if log is None:
        def log(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)
    amp = {"fp32": None, "bf16": torch.bfloat16}[cfg.dtype_name]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    meta: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(),
        "device": _timing.device_desc(device), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "loadavg_at_start": _timing.loadavg(), "dtype": cfg.dtype_name,
        "command": cfg.command, "warmup": cfg.warmup, "gpt2_warmup": cfg.gpt2_warmup,
        "compile_warmup": cfg.compile_warmup,
        "activation": cfg.activation, "bias": cfg.bias, "baseline": BASELINE,
        "peak_tflops": None if cfg.peak_flops is None else cfg.peak_flops / 1e12,
        "peak_source": cfg.peak_source, "shapes": {}, "interrupted": False,
    }
    rows: list[Row] = []
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="attnkit-bench-train-") as tmp, \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for shape in [x for x in SHAPES if x in cfg.shapes
                          and not (x == "gpt2" and cfg.no_gpt2)]:
                r, info = run_shape(shape, cfg, device, amp, tmp, log)
                info["rounds"] = cfg.repeats(shape)
                rows += r
                meta["shapes"][shape] = info
    except KeyboardInterrupt:
        meta["interrupted"] = True
    finally:
        torch.set_num_threads(old_threads)
    meta["loadavg_at_end"] = _timing.loadavg()
    meta["total_s"] = round(time.perf_counter() - t0, 1)
    return {"meta": meta, "rows": rows}


# ---- report -----------------------------------------------------------------------------------



def _spread(r: Row) -> str:
    if not r.round_speedups or r.variant == BASELINE:
        return "-"
    return f"{min(r.round_speedups):.2f}–{max(r.round_speedups):.2f}"


def render(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    load0, load1 = meta.get("loadavg_at_start"), meta.get("loadavg_at_end")
    out = [
        f"torch {meta['torch']} | device: {meta['device']} | threads {meta['threads']} | dtype "
        f"{meta['dtype']} | loadavg (1/5/15 min) {load0} → {load1} | command: "
        f"`{meta['command']}`",
        "",
        "One step = batch, forward, loss, backward, clip_grad_norm(1.0), AdamW step, "
        "zero_grad(set_to_none). ms/iter: median wall clock of the timed rounds after "
        f"{meta['warmup']} warm-up steps (GPT-2: {meta['gpt2_warmup']}; +"
        f"{meta['compile_warmup']} for compiled variants), "
        "one step of each variant per round, round-robin; CPU ms: median process CPU time per "
        "step (all threads; less sensitive to other load than wall clock, but it counts "
        "threads spinning while they wait). tokens/s = batch·context / median. speedup = "
        f"t({meta['baseline']}) / t(variant), > 1 = faster than the baseline; round range: "
        "min–max of the paired per-round ratios (noise indicator). All models of a shape start "
        f"from the same weights; activation {meta['activation']}, bias {meta['bias']}, "
        "dropout 0.",
    ]
    cores = meta.get("cpu_count") or 0
    if meta["device"].startswith("cpu") and any(
            x and x[0] > 0.5 * cores for x in (load0, load1)):
        out.append(f"WARNING: the 1-min load average ({load0[0] if load0 else '?'} at start, "
                   f"{load1[0] if load1 else '?'} at end) exceeds half of the {cores} cores: "
                   "other processes compete for the CPU, absolute times are inflated and "
                   "noisy; the paired speedups are the more reliable figure.")
    mfu = meta.get("peak_tflops") is not None
    for shape, info in meta["shapes"].items():
        s = info["shape"]
        out += ["", f"**{TITLES[shape]}** — {s['layers']} layers, d={s['d_model']}, "
                f"{s['heads']} heads, vocab {s['vocab']}, context {s['seq_len']}, batch "
                f"{s['batch']} ({info['tokens_per_step']} tokens/step, {info['params']:,} "
                f"parameters, {info['flops_per_token'] / 1e6:.1f} MFLOP/token); "
                f"{info['rounds']} rounds"
                + (f" ({info['stopped']})" if info.get("stopped") else "")
                + f"; same-weights |Δ loss| nanoGPT vs attnkit {info['loss_diff']:.2g}", ""]
        hdr = "| variant | step | ms/iter | CPU ms | tokens/s | speedup | round range |"
        sep = "|---|---|---:|---:|---:|---:|---:|"
        if mfu:
            hdr += " MFU |"
            sep += "---:|"
        out += [hdr, sep]
        for r in rows:
            if r.shape != shape:
                continue
            if r.status != "ok":
                out.append(f"| {r.variant} | error ({r.reason}) | | | | | |"
                           + (" |" if mfu else ""))
                continue
            line = (f"| {r.variant} | {r.what} | {_timing.fmt_ms(r.ms / 1e3)} | "
                    f"{_timing.fmt_ms(r.cpu_ms / 1e3)} | {r.tokens_per_s:,.0f} | "
                    + ("1.00 (baseline)" if r.variant == BASELINE else
                       "-" if r.speedup is None else f"{r.speedup:.2f}×")
                    + f" | {_spread(r)} |")
            if mfu:
                line += f" {100 * r.mfu:.3g}% |" if r.mfu is not None else " - |"
            out.append(line)
        comp = [r for r in rows if r.shape == shape and r.variant.endswith("compile")
                and r.warmup_ms]
        if comp:
            out.append("")
        for r in comp:
            out.append(f"{r.variant}: first step (compilation) {r.warmup_ms[0] / 1e3:.1f} s "
                       "(much shorter when torch's on-disk compile cache is warm).")
    if mfu:
        out += ["", f"MFU = flops_per_token × tokens/s / peak, peak {meta['peak_tflops']:g} "
                f"TFLOP/s ({meta['peak_source']}); flops_per_token = CausalLM.flops_per_token "
                "(6N + 12·layers·d·context), the same for every variant of a shape."]
    char = {r.variant: r for r in rows if r.shape == "char" and r.status == "ok" and r.ms}
    base = char.get(BASELINE)
    ours = [r for r in char.values() if r.variant.startswith("attnkit")]
    if base and ours:
        best = min(ours, key=lambda r: r.ms)
        scaled = 100.0 * best.ms / base.ms
        out += ["", f"Target (issue: attnkit ≤ 60 ms/iter where the reference runs ~100 ms, "
                f"i.e. ≥ {100 / 60:.2f}× the reference): the fastest attnkit variant, "
                f"{best.variant}, runs at {best.speedup:.2f}× {BASELINE} here — {scaled:.0f} ms "
                f"where the reference takes 100 ms: {'met' if scaled <= 60 else 'NOT met'}."]
    for r in rows:
        if r.profile:
            out += ["", f"Profile {TITLES[r.shape]} {r.variant} (self CPU ms per step):", "",
                    "| op | self ms | calls/step |", "|---|---:|---:|"]
            out += [f"| {o['op']} | {o['self_cpu_ms']:.3f} | {o['calls_per_step']:g} |"
                    for o in r.profile]
    out += ["", _timing.total_line(meta)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    return _timing.run_script(argv, "benchmarks/train.py", build_parser(), run_benchmarks, render)


if __name__ == "__main__":
    raise SystemExit(main())
