#!/usr/bin/env python
"""Benchmark whole attnkit models against Hugging Face ``transformers`` on the same weights.

For each model — GPT-2 small shapes (``GPT2LMHeadModel`` vs :class:`attnkit.models.CausalLM`),
BERT-base shapes (``BertForMaskedLM`` or ``BertModel`` vs attnkit's) and T5-small shapes
(``T5ForConditionalGeneration`` vs :class:`attnkit.models.Seq2SeqLM`; HF's T5 has no SDPA
path, so it runs its eager attention) — this

1. builds the HF model from a config with random weights (nothing is downloaded; LayerNorm
   gains and biases are perturbed so they are not trivially 1 / 0), dropout 0 everywhere and
   ``attn_implementation="sdpa"`` (HF's fastest attention on CPU);
2. ``save_pretrained(safe_serialization=True)`` to a temporary directory and loads it into
   attnkit with the interop loaders (:func:`load_gpt2` / :func:`load_bert` / :func:`load_t5`);
3. checks the two agree: max |Δ| of the forward output (eval, no grad), and after one
   forward+backward (train mode, dropout 0, the same random cotangent on the output) the max
   |Δ| over every parameter gradient, relative to the largest gradient entry;
4. times forward (eval + ``torch.no_grad()``) and forward+backward (train mode,
   ``zero_grad(set_to_none=True)``, ``output.backward(dout)``): median of repeats after
   warm-up, the two models sampled alternately (A B A B ...) so machine drift hits both alike.

ratio = t(transformers) / t(attnkit): > 1 means attnkit is faster, < 1 slower.

Both models get the same inputs: ``input_ids`` and an all-ones ``attention_mask`` (what a
tokenizer returns for an unpadded batch; ``--no-attention-mask`` omits it). HF GPT-2 is called
with ``use_cache=False`` (attnkit builds no KV cache in a plain forward either).

    python benchmarks/models.py --quick               # smoke run: 2 layers, short inputs
    python benchmarks/models.py --json out.json       # full default run (< 5 min on 2 cores)
    python benchmarks/models.py --models gpt2 --profile 20   # + torch.profiler op tables
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

MODELS = ("gpt2", "bert", "t5")
MODES = ("fwd", "fwdbwd")
MODE_TITLES = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
# Shapes of the real checkpoints (GPT-2 small, BERT-base) and the default inputs: sized so the
# full run takes roughly five minutes on 2 idle CPU cores.
SHAPES = {
    "gpt2": dict(layers=12, d_model=768, heads=12, d_ff=3072, vocab=50257, batch=2, seq_len=256),
    "bert": dict(layers=12, d_model=768, heads=12, d_ff=3072, vocab=30522, batch=4, seq_len=128),
    # T5-small: 6 + 6 layers; seq_len is the source length, the target is a quarter of it
    "t5": dict(layers=6, d_model=512, heads=8, d_ff=2048, vocab=32128, batch=2, seq_len=256),
}
QUICK = dict(layers=2, batch=1, seq_len=64)
FWD_TOL = {torch.float32: 1e-3, torch.bfloat16: 0.25}  # max |Δ output| flagged above this
GRAD_TOL = {torch.float32: 1e-3, torch.bfloat16: 0.1}  # max |Δ grad| / max |grad|


# ---- results --------------------------------------------------------------------------------


@dataclass
class Timed:
    """One model's timing of one mode."""

    ms: float
    samples_ms: list[float]
    warmup_ms: list[float]
    inner: int
    stopped: str = ""


@dataclass
class Row:
    model: str  # "gpt2" | "bert" | "t5"
    title: str  # e.g. "GPT-2 (GPT2LMHeadModel) B=2 L=256"
    mode: str  # "fwd" | "fwdbwd"
    attnkit: Timed | None
    transformers: Timed | None
    ratio: float | None  # t(transformers) / t(attnkit)
    round_ratios: list[float] = field(default_factory=list)  # paired, one per A/B round
    max_abs_diff: float | None = None  # fwd: output; fwdbwd: max over parameter grads
    rel_diff: float | None = None  # fwdbwd: max |Δ grad| / max |grad|
    status: str = "ok"
    reason: str = ""
    profile: dict[str, Any] | None = None


# ---- model pairs ----------------------------------------------------------------------------


@dataclass
class Pair:
    """The HF model and the attnkit model loaded from its checkpoint, plus shared inputs."""

    title: str
    hf: torch.nn.Module
    ak: torch.nn.Module
    hf_call: Callable[[], torch.Tensor]  # the tensor backward starts from
    ak_call: Callable[[], torch.Tensor]
    grad_pairs: Callable[[], list[tuple[str, torch.Tensor | None, torch.Tensor | None]]]
    info: dict[str, Any]


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    return transformers


def _perturb_vectors(model: torch.nn.Module, seed: int) -> None:
    """Nudge 1-D parameters (biases, norm gains) so they are not trivially 0 / 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.02)


def _shape(cfg: argparse.Namespace, model: str) -> dict[str, int]:
    s = dict(SHAPES[model])
    if cfg.quick:
        s.update(QUICK)
    for k in s:
        v = getattr(cfg, f"{model}_{k}", None)
        if v is None:
            v = getattr(cfg, k, None)
        if v is not None:
            s[k] = v
    return s


def _inputs(cfg, vocab: int, batch: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(1, vocab, (batch, seq_len), generator=g)
    am = None if cfg.no_attention_mask else torch.ones(batch, seq_len, dtype=torch.long)
    return ids, am


def _hf_and_attnkit(cfg, hf_cls, hf_config, load: Callable[[str], torch.nn.Module],
                    directory: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A seeded HF model (1-D parameters perturbed), saved to ``directory`` and loaded back
    with attnkit's ``load``; both cast to the run's dtype."""
    torch.manual_seed(cfg.seed)
    hf = hf_cls(hf_config)
    _perturb_vectors(hf, cfg.seed)
    hf.save_pretrained(directory, safe_serialization=True)
    ak = load(directory)
    return hf.to(cfg.torch_dtype), ak.to(cfg.torch_dtype)


def build_gpt2(cfg, tmp: str) -> Pair:
    transformers = _quiet_transformers()
    from attnkit.interop.gpt2 import load_gpt2, weight_map

    s = _shape(cfg, "gpt2")
    hcfg = transformers.GPT2Config(
        vocab_size=s["vocab"], n_positions=max(1024, s["seq_len"]), n_embd=s["d_model"],
        n_layer=s["layers"], n_head=s["heads"], n_inner=s["d_ff"],
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None, attn_implementation="sdpa")
    hf, ak = _hf_and_attnkit(cfg, transformers.GPT2LMHeadModel, hcfg, load_gpt2,
                             os.path.join(tmp, "gpt2"))
    ids, am = _inputs(cfg, s["vocab"], s["batch"], s["seq_len"])

    def hf_call():
        return hf(input_ids=ids, attention_mask=am, use_cache=False).logits

    def ak_call():
        return ak(ids, attention_mask=am).logits

    def grad_pairs():
        hp, ap = dict(hf.named_parameters()), dict(ak.named_parameters())
        out = []
        for hname, ours, transposed in weight_map(ak.config):
            gh = hp[hname].grad if hname in hp else None
            ga = ap[ours].grad
            if gh is not None and transposed:
                gh = gh.T
            out.append((ours, ga, gh))
        return out

    return Pair(f"GPT-2 (GPT2LMHeadModel) B={s['batch']} L={s['seq_len']}", hf, ak, hf_call,
                ak_call, grad_pairs, {"shape": s, "hf_class": "GPT2LMHeadModel",
                                      "attnkit_class": type(ak).__name__})


def build_bert(cfg, tmp: str) -> Pair:
    transformers = _quiet_transformers()
    from attnkit.interop.bert import load_bert, weight_map

    s = _shape(cfg, "bert")
    hcfg = transformers.BertConfig(
        vocab_size=s["vocab"], hidden_size=s["d_model"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], intermediate_size=s["d_ff"], hidden_act="gelu",
        max_position_embeddings=max(512, s["seq_len"]), hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="sdpa")
    mlm = cfg.bert_head == "mlm"
    hf_cls = "BertForMaskedLM" if mlm else "BertModel"
    hf, ak = _hf_and_attnkit(cfg, getattr(transformers, hf_cls), hcfg,
                             lambda d: load_bert(d, head="mlm" if mlm else None),
                             os.path.join(tmp, "bert"))
    ids, am = _inputs(cfg, s["vocab"], s["batch"], s["seq_len"])

    if mlm:
        def hf_call():
            return hf(input_ids=ids, attention_mask=am).logits

        def ak_call():
            return ak(ids, attention_mask=am).logits
    else:
        def hf_call():
            return hf(input_ids=ids, attention_mask=am).last_hidden_state

        def ak_call():
            return ak(ids, attention_mask=am).last_hidden_state

    def grad_pairs():
        hp, ap = dict(hf.named_parameters()), dict(ak.named_parameters())
        out = []
        for hnames, ours in weight_map(ak):
            parts = [hp[n].grad if n in hp else None for n in hnames]
            gh = None if any(p is None for p in parts) else torch.cat(parts, dim=0)
            out.append((ours, ap[ours].grad, gh))
        return out

    return Pair(f"BERT ({hf_cls}) B={s['batch']} L={s['seq_len']}", hf, ak, hf_call, ak_call,
                grad_pairs, {"shape": s, "hf_class": hf_cls, "attnkit_class": type(ak).__name__})


def build_t5(cfg, tmp: str) -> Pair:
    transformers = _quiet_transformers()
    from attnkit.interop.t5 import load_t5, weight_map

    s = _shape(cfg, "t5")
    hcfg = transformers.T5Config(
        vocab_size=s["vocab"], d_model=s["d_model"], d_kv=s["d_model"] // s["heads"],
        d_ff=s["d_ff"], num_layers=s["layers"], num_decoder_layers=s["layers"],
        num_heads=s["heads"], dropout_rate=0.0, feed_forward_proj="relu",
        tie_word_embeddings=True, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    hf, ak = _hf_and_attnkit(cfg, transformers.T5ForConditionalGeneration, hcfg, load_t5,
                             os.path.join(tmp, "t5"))
    ids, am = _inputs(cfg, s["vocab"], s["batch"], s["seq_len"])
    g = torch.Generator().manual_seed(cfg.seed + 1)
    dec = torch.randint(1, s["vocab"], (s["batch"], max(1, s["seq_len"] // 4)), generator=g)

    def hf_call():
        return hf(input_ids=ids, attention_mask=am, decoder_input_ids=dec, use_cache=False).logits

    def ak_call():
        return ak(ids, am, decoder_input_ids=dec).logits

    def grad_pairs():
        hp, ap = dict(hf.named_parameters()), dict(ak.named_parameters())
        out = []
        for hnames, ours in weight_map(ak.config):
            parts = [hp[n].grad if n in hp else None for n in hnames]
            gh = None if any(p is None for p in parts) else torch.cat(parts, dim=0)
            out.append((ours, ap[ours].grad, gh))
        return out

    return Pair(f"T5 (T5ForConditionalGeneration) B={s['batch']} Ls={s['seq_len']} "
                f"Lt={dec.shape[1]}", hf, ak, hf_call, ak_call, grad_pairs,
                {"shape": s, "hf_class": "T5ForConditionalGeneration",
                 "attnkit_class": type(ak).__name__})


BUILDERS = {"gpt2": build_gpt2, "bert": build_bert, "t5": build_t5}


# ---- runners ----------------------------------------------------------------------------------


def make_fwd(model: torch.nn.Module, call: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def fwd():
        with torch.no_grad():
            call()

    return fwd


def make_fwdbwd(model: torch.nn.Module, call: Callable[[], torch.Tensor],
                dout: torch.Tensor) -> Callable[[], None]:
    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        call().backward(dout)

    return fwd_bwd


def set_mode(pair: Pair, mode: str) -> None:
    for m in (pair.hf, pair.ak):
        m.train(mode == "fwdbwd")


def check_fwd(pair: Pair) -> float:
    set_mode(pair, "fwd")
    with torch.no_grad():
        a = pair.ak_call().float()
        h = pair.hf_call().float()
    return float((a - h).abs().max())


def check_fwdbwd(pair: Pair, dout: torch.Tensor) -> tuple[float, float]:
    """(max |Δ grad|, that / max |grad|) over every parameter, after one fwd+bwd each."""
    set_mode(pair, "fwdbwd")
    make_fwdbwd(pair.ak, pair.ak_call, dout)()
    make_fwdbwd(pair.hf, pair.hf_call, dout)()
    worst, scale = 0.0, 0.0
    missing = []
    for name, ga, gh in pair.grad_pairs():
        if ga is None or gh is None:
            missing.append(name)
            continue
        worst = max(worst, float((ga.float() - gh.float()).abs().max()))
        scale = max(scale, float(gh.float().abs().max()))
    if missing:
        raise RuntimeError(f"no gradient to compare for {missing[:5]}")
    pair.ak.zero_grad(set_to_none=True)
    pair.hf.zero_grad(set_to_none=True)
    return worst, worst / max(scale, 1e-30)


def profile_once(fns: dict[str, Callable[[], None]], top: int, calls: int = 3) -> dict[str, Any]:
    """Self-CPU ms per op of ``calls`` profiled calls of each fn (record_shapes), taking each
    op's minimum over the calls (a call preempted by other load inflates whichever ops it hit),
    side by side and sorted by the gap between the two."""
    from torch.profiler import ProfilerActivity, profile

    per: dict[str, dict[str, tuple[float, int]]] = {}
    shapes: dict[str, list[dict[str, Any]]] = {}
    totals: dict[str, float] = {}
    for label, fn in fns.items():
        fn()  # warm
        best: dict[str, tuple[float, int]] = {}
        best_shape: dict[tuple[str, str], tuple[float, int]] = {}
        call_totals = []
        for _ in range(max(1, calls)):
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                fn()
            ka = prof.key_averages()
            call_totals.append(sum(e.self_cpu_time_total for e in ka) / 1e3)
            for e in ka:
                ms = e.self_cpu_time_total / 1e3
                if e.key not in best or ms < best[e.key][0]:
                    best[e.key] = (ms, e.count)
            for e in prof.key_averages(group_by_input_shape=True):
                k = (e.key, str(e.input_shapes)[:160])
                ms = e.self_cpu_time_total / 1e3
                if k not in best_shape or ms < best_shape[k][0]:
                    best_shape[k] = (ms, e.count)
        per[label] = best
        totals[label] = min(call_totals)
        shapes[label] = [{"op": k[0], "shapes": k[1], "count": c, "self_ms": round(ms, 3)}
                         for k, (ms, c) in sorted(best_shape.items(),
                                                  key=lambda kv: -kv[1][0])[:top]]
    a, h = per["attnkit"], per["transformers"]
    zero = (0.0, 0)
    ops = sorted(set(a) | set(h), key=lambda k: -abs(a.get(k, zero)[0] - h.get(k, zero)[0]))
    table = [{"op": k, "attnkit_ms": round(a.get(k, zero)[0], 3),
              "attnkit_count": a.get(k, zero)[1],
              "transformers_ms": round(h.get(k, zero)[0], 3),
              "transformers_count": h.get(k, zero)[1]} for k in ops[:top]]
    return {"calls": max(1, calls), "total_self_ms": {k: round(v, 2) for k, v in totals.items()},
            "ops": table, "top_by_shape": shapes}


def _timed(t: _timing.Timing) -> Timed:
    return Timed(t.median_s * 1e3, [s * 1e3 for s in t.samples_s],
                 [s * 1e3 for s in t.warmup_s], t.inner, t.stopped)


def run_model(name: str, cfg, tmp: str, log: Callable[[str], None]) -> list[Row]:
    t0 = time.perf_counter()
    pair = BUILDERS[name](cfg, tmp)
    log(f"[{name}] built + saved + loaded in {time.perf_counter() - t0:.1f} s: {pair.title}")
    rows = []
    try:
        out_shape = None
        for mode in cfg.mode_list:
            row = Row(name, pair.title, mode, None, None, None)
            rows.append(row)
            try:
                if mode == "fwd":
                    row.max_abs_diff = check_fwd(pair)
                    fns = [make_fwd(pair.ak, pair.ak_call), make_fwd(pair.hf, pair.hf_call)]
                else:
                    if out_shape is None:
                        with torch.no_grad():
                            out_shape = pair.ak_call().shape
                    g = torch.Generator().manual_seed(cfg.seed + 1)
                    dout = torch.randn(out_shape, generator=g).to(cfg.torch_dtype)
                    row.max_abs_diff, row.rel_diff = check_fwdbwd(pair, dout)
                    fns = [make_fwdbwd(pair.ak, pair.ak_call, dout),
                           make_fwdbwd(pair.hf, pair.hf_call, dout)]
                set_mode(pair, mode)
                log(f"[{name}] {MODE_TITLES[mode]}: max |Δ| = {row.max_abs_diff:.3g}; timing "
                    f"{cfg.warmup} warm-up + {cfg.repeats} repeats, interleaved")
                ta, th = _timing.measure_interleaved(
                    fns, warmup=cfg.warmup, repeats=cfg.repeats,
                    min_sample_s=cfg.min_sample_ms / 1e3, call_budget_s=cfg.call_budget_s,
                    case_budget_s=cfg.case_budget_s)
                row.attnkit, row.transformers = _timed(ta), _timed(th)
                row.ratio = th.median_s / ta.median_s
                row.round_ratios = [h / a for a, h in zip(ta.samples_s, th.samples_s,
                                                          strict=False)]
                log(f"[{name}] {MODE_TITLES[mode]}: attnkit {row.attnkit.ms:.1f} ms, "
                    f"transformers {row.transformers.ms:.1f} ms, ratio {row.ratio:.3f}")
                if cfg.profile:
                    set_mode(pair, mode)
                    row.profile = profile_once({"attnkit": fns[0], "transformers": fns[1]},
                                               cfg.profile, cfg.profile_calls)
                if mode == "fwdbwd":
                    pair.ak.zero_grad(set_to_none=True)
                    pair.hf.zero_grad(set_to_none=True)
            except Exception as e:  # report and go on with the next measurement
                row.status, row.reason = "error", f"{type(e).__name__}: {e}"
                log(f"[{name}] {MODE_TITLES[mode]}: ERROR {row.reason}")
    finally:
        del pair
        gc.collect()
    return rows


# ---- CLI ------------------------------------------------------------------------------------


def _csv(kind, valid):
    def parse(s: str):
        items = [kind(x) for x in s.split(",") if x.strip()]
        bad = [x for x in items if valid is not None and x not in valid]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma list of {valid}, got {s!r}")
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--quick", action="store_true",
      help=f"smoke run: {QUICK['layers']} layers, B={QUICK['batch']}, L={QUICK['seq_len']}, "
      "2 repeats (widths and vocabularies stay real unless overridden)")
    a("--models", type=_csv(str, MODELS), default=list(MODELS),
      help="comma list of gpt2,bert,t5 (default: all)")
    a("--modes", type=_csv(str, MODES), default=list(MODES),
      help="comma list of fwd,fwdbwd (default: both)")
    a("--bert-head", choices=("mlm", "none"), default="mlm",
      help="BERT with the masked-LM head (BertForMaskedLM) or the bare encoder with pooler "
      "(BertModel) (default: %(default)s)")
    for k in ("batch", "seq_len", "layers", "d_model", "heads", "d_ff", "vocab"):
        flag = k.replace("_", "-")
        a(f"--{flag}", type=int, default=None,
          help=f"override {k} for every model (defaults: GPT-2 "
          f"{SHAPES['gpt2'][k]}, BERT {SHAPES['bert'][k]}, T5 {SHAPES['t5'][k]})")
    for m in MODELS:
        for k in ("batch", "seq_len", "layers"):
            a(f"--{m}-{k.replace('_', '-')}", dest=f"{m}_{k}", type=int, default=None,
              help=f"override {k} for {m} only")
    a("--dtype", choices=sorted(DTYPES), default="float32", help="default: %(default)s")
    a("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    a("--no-attention-mask", action="store_true",
      help="call both models without attention_mask (default: an all-ones mask)")
    a("--repeats", type=int, default=None, help="timed samples per model (default 5; --quick 2)")
    a("--warmup", type=int, default=1, help="untimed warm-up calls (default: %(default)s)")
    a("--min-sample-ms", type=float, default=2.0,
      help="loop calls faster than this inside one sample (default: %(default)s)")
    a("--call-budget-s", type=float, default=60.0,
      help="stop repeating once one call takes longer than this (default: %(default)s)")
    a("--case-budget-s", type=float, default=60.0,
      help="stop repeating once a model's samples took this long (default: %(default)s)")
    a("--profile", type=int, nargs="?", const=15, default=0, metavar="TOP",
      help="also run torch.profiler (record_shapes) on one call of each model and print the "
      "TOP ops (default 15) with the largest self-CPU gap between them")
    a("--profile-calls", type=int, default=3,
      help="profiled calls per model; each op's minimum over them is reported (default: "
      "%(default)s)")
    a("--seed", type=int, default=0, help="weights / inputs RNG seed (default: %(default)s)")
    a("--json", metavar="PATH", default=None, help="also write results as JSON")
    return p


def finalize(cfg: argparse.Namespace) -> argparse.Namespace:
    cfg = argparse.Namespace(**vars(cfg))
    if getattr(cfg, "command", None) is None:
        cfg.command = _timing.command_line(None, "")
    if cfg.repeats is None:
        cfg.repeats = 2 if cfg.quick else 5
    cfg.model_list = list(cfg.models)
    cfg.mode_list = list(cfg.modes)
    cfg.torch_dtype = DTYPES[cfg.dtype]
    return cfg


def run_benchmarks(cfg: argparse.Namespace, log: Callable[[str], None] | None = None) -> dict:
    """Build, check and time every requested model; returns ``{"meta", "rows"}``."""
    cfg = finalize(cfg)
    if log is None:
        def log(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)
    transformers = _quiet_transformers()
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    meta = {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "device": _timing.device_desc(torch.device("cpu")),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "loadavg_at_start": _timing.loadavg(), "dtype": str(cfg.torch_dtype).replace("torch.", ""),
        "hf_attn_implementation": "sdpa", "attention_mask": not cfg.no_attention_mask,
        "command": cfg.command, "repeats": cfg.repeats, "warmup": cfg.warmup,
        "config": {k: v for k, v in vars(cfg).items() if k != "torch_dtype"},
        "models": {}, "interrupted": False,
    }
    rows: list[Row] = []
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="attnkit-bench-models-") as tmp:
            for name in cfg.model_list:
                rows += run_model(name, cfg, tmp, log)
                meta["models"][name] = {"shape": _shape(cfg, name)}
    except KeyboardInterrupt:
        meta["interrupted"] = True
    finally:
        torch.set_num_threads(old_threads)
    meta["loadavg_at_end"] = _timing.loadavg()
    meta["total_s"] = round(time.perf_counter() - t0, 1)
    return {"meta": meta, "rows": rows}


# ---- report ---------------------------------------------------------------------------------


def _fmt(t: Timed | None) -> str:
    return "-" if t is None else _timing.fmt_ms(t.ms / 1e3) + ("*" if t.stopped else "")


def _spread(r: Row) -> str:
    if not r.round_ratios:
        return "-"
    lo, hi = min(r.round_ratios), max(r.round_ratios)
    return f"{lo:.2f}–{hi:.2f} (n={len(r.round_ratios)})"


def _diff(r: Row) -> str:
    if r.max_abs_diff is None:
        return "-"
    s = f"{r.max_abs_diff:.2g}"
    return s + (f" (rel {r.rel_diff:.1g})" if r.rel_diff is not None else "")


def render(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    load = meta.get("loadavg_at_start")
    out = [
        f"torch {meta['torch']} | transformers {meta['transformers']} (attn_implementation="
        f"\"{meta['hf_attn_implementation']}\") | device: {meta['device']} | threads "
        f"{meta['threads']} | dtype {meta['dtype']} | loadavg {load} → "
        f"{meta.get('loadavg_at_end')} | command: `{meta['command']}`",
        "",
        f"Times: median ms per call of {meta['repeats']} repeats after {meta['warmup']} "
        "warm-up, the two models sampled alternately (A B A B ...). ratio = t(transformers) / "
        "t(attnkit): > 1 = attnkit faster. Same weights (HF save_pretrained → attnkit "
        "interop loader), same inputs (input_ids + "
        + ("all-ones attention_mask" if meta["attention_mask"] else "no attention_mask")
        + "; HF GPT-2 use_cache=False), dropout 0 in both. fwd = eval + torch.no_grad(); "
        "fwd+bwd = train mode, zero_grad(set_to_none) + output.backward(dout). max |Δ|: fwd = "
        "output; fwd+bwd = over all parameter grads (rel = / max |grad|). round ratios: "
        "min–max of the paired per-round ratios (noise indicator). * = repeats cut short.",
    ]
    if load and meta.get("cpu_count") and load[0] > 0.5 * meta["cpu_count"]:
        out.append(f"WARNING: 1-min load average was {load[0]} on {meta['cpu_count']} cores "
                   "at start: other processes compete for the CPU, timings are noisy.")
    out += ["", "| model | mode | attnkit ms | transformers ms | ratio | round ratios | "
            "max \\|Δ\\| |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.status != "ok":
            out.append(f"| {r.title} | {MODE_TITLES[r.mode]} | error ({r.reason}) | | | | |")
            continue
        out.append(f"| {r.title} | {MODE_TITLES[r.mode]} | {_fmt(r.attnkit)} | "
                   f"{_fmt(r.transformers)} | {r.ratio:.3f} | {_spread(r)} | {_diff(r)} |")
    notes = []
    tol_f, tol_g = FWD_TOL[DTYPES[meta["dtype"]]], GRAD_TOL[DTYPES[meta["dtype"]]]
    for r in rows:
        where = f"{r.title} {MODE_TITLES[r.mode]}"
        if r.mode == "fwd" and r.max_abs_diff is not None and not r.max_abs_diff <= tol_f:
            notes.append(f"- MISMATCH {where}: max |Δ output| {r.max_abs_diff:.3g} > {tol_f:g}")
        if r.rel_diff is not None and not r.rel_diff <= tol_g:
            notes.append(f"- MISMATCH {where}: max |Δ grad| / max |grad| {r.rel_diff:.3g} > "
                         f"{tol_g:g}")
        if r.ratio is not None and r.ratio < 1.0:
            notes.append(f"- {where}: attnkit slower (ratio {r.ratio:.3f} < 1)")
    if notes:
        out += ["", "Checks:", *notes]
    for r in rows:
        if not r.profile:
            continue
        p = r.profile
        out += ["", f"Profile (one call, self CPU ms) — {r.title} {MODE_TITLES[r.mode]}: total "
                f"attnkit {p['total_self_ms']['attnkit']}, transformers "
                f"{p['total_self_ms']['transformers']} (min of {p['calls']} calls; per op: "
                "min over the calls); ops by |gap|:", "",
                "| op | attnkit ms (calls) | transformers ms (calls) |", "|---|---:|---:|"]
        for o in p["ops"]:
            out.append(f"| {o['op']} | {o['attnkit_ms']:.2f} ({o['attnkit_count']}) | "
                       f"{o['transformers_ms']:.2f} ({o['transformers_count']}) |")
    out += ["", _timing.total_line(meta)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    return _timing.run_script(argv, "benchmarks/models.py", build_parser(), run_benchmarks, render)


if __name__ == "__main__":
    raise SystemExit(main())
