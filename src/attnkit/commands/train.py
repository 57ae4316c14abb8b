"""``attnkit train``: corpus -> tokenizer -> token files -> model -> Trainer -> report + sample.

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

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from attnkit.commands.common import (
    RUN_FILE,
    CliError,
    cli_errors,
    cpu_threads,
    echo,
    fail,
    human,
    is_main,
    write_json,
)
from attnkit.commands.config_files import (
    OBJECTIVES,
    DataConfig,
    RunConfig,
    TokenizerConfig,
    coerce_fields,
    load_config_file,
    parse_set,
)

__all__ = ["train_cmd", "DEFAULT_PRESETS", "DEFAULT_STEPS", "TRAIN_DEFAULTS", "resolve_run",
           "ResolvedRun", "split_corpus", "load_corpus", "model_config_class"]

DEFAULT_PRESETS = {"causal": "char-gpt", "mlm": "bert-tiny", "seq2seq": "t5-tiny"}
ARCHITECTURES = {"causal": "CausalLM", "mlm": "BertForMaskedLM", "seq2seq": "Seq2SeqLM"}
#: Steps of the default run: fits in ~5 minutes on 2 CPU cores, corpus build included.
DEFAULT_STEPS = 2000
#: nanoGPT's shakespeare-char recipe at the char-gpt preset's size (batch 12 x context 64);
#: the learning rate follows the model width (:func:`default_lr`), min_lr = lr / 10.
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": DEFAULT_STEPS, "batch_size": 12, "betas": (0.9, 0.99), "weight_decay": 0.1,
    "grad_clip": 1.0, "eval_batches": 20, "log_every": 10,
}
# Not carried over from a saved run.json: they describe this invocation.
_RUNTIME_KEYS = ("resume", "out_dir", "distributed", "device", "progress")
SAMPLE_CHARS = 300
SAMPLE_RULE = "\u2500" * 72  # frames the sample (dashes would blend with RST underlines)


# ---- configuration --------------------------------------------------------------------------


def model_config_class(objective: str) -> type:
    from attnkit.models import BertConfig, CausalLMConfig, Seq2SeqConfig

    return {"causal": CausalLMConfig, "mlm": BertConfig, "seq2seq": Seq2SeqConfig}[objective]


def default_lr(d_model: int) -> float:
    """Peak learning rate by width (narrow models take larger steps; cf. GPT-3's table):
    3e-3 up to d_model 128 (char-gpt, 2000 steps: validation loss 1.52 vs 1.77 at 1e-3),
    1e-3 up to 512, 6e-4 above."""
    return 3e-3 if d_model <= 128 else 1e-3 if d_model <= 512 else 6e-4


def _preset_objective(name: str) -> str | None:
    for obj in OBJECTIVES:
        if name in model_config_class(obj).presets:
            return obj
    return None


def _all_presets() -> str:
    return "; ".join(f"{obj}: {', '.join(sorted(model_config_class(obj).presets))}"
                     for obj in OBJECTIVES)


@dataclass
class ResolvedRun:
    run: RunConfig
    train: Any  # TrainConfig
    out_dir: Path
    resume: bool


def _required_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def resolve_run(config_file: str | None = None, sets: list[str] | None = None,
                flags: dict[str, Any] | None = None) -> ResolvedRun:
    """Layer the command defaults (or the run's ``run.json`` on resume), the config file,
    the direct flags and ``--set`` into a :class:`RunConfig` and a ``TrainConfig``."""
    from attnkit.train.config import TrainConfig

    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    file = load_config_file(config_file) if config_file else {}
    parsed = [parse_set(s) for s in sets or []]

    layers: list[dict[str, dict[str, Any]]] = [
        {s: dict(file.get(s, {})) for s in ("model", "train", "data", "tokenizer")}]
    flag_layer: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "data": {},
                                             "tokenizer": {}}
    for flag, (section, key) in _FLAG_KEYS.items():
        if flag in flags:
            flag_layer[section][key] = flags[flag]
    if flags.get("resume"):
        flag_layer["train"]["resume"] = True
    layers.append(flag_layer)
    set_layer: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "data": {},
                                            "tokenizer": {}}
    top: dict[str, Any] = {k: file[k] for k in ("objective", "model_preset") if k in file}
    for key in ("objective", "model_preset"):
        if flags.get(key) is not None:
            top[key] = flags[key]
    for section, key, value in parsed:
        if key is None:
            top[section] = value
        else:
            set_layer[section][key] = value
    layers.append(set_layer)
    explicit = {s: set().union(*(layer[s] for layer in layers))
                for s in ("model", "train", "data", "tokenizer")}

    def last(section: str, key: str, default: Any = None) -> Any:
        value = default
        for layer in layers:
            if key in layer[section]:
                value = layer[section][key]
        return value

    # objective and preset (a preset implies its objective)
    objective, preset = top.get("objective"), top.get("model_preset")
    if objective is not None and objective not in OBJECTIVES:
        fail(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    if preset is not None:
        owner = _preset_objective(preset)
        if owner is None:
            fail(f"unknown preset {preset!r}; valid presets by objective: {_all_presets()}")
        if objective is not None and owner != objective:
            fail(f"preset {preset!r} is a {owner} model; --objective {objective} needs one of: "
                 f"{', '.join(sorted(model_config_class(objective).presets))}")
        objective = owner
    resume_flag = last("train", "resume", False)
    resume = resume_flag not in (False, "false", "False", "0", "no")
    out = last("train", "out_dir")
    obj_guess = objective or "causal"
    full_model = False
    if preset is None and "model" in file:  # a [model] naming every required field
        required = _required_fields(model_config_class(obj_guess)) - {"vocab_size"}
        full_model = bool(required) and not required - set(file["model"])
    if out is None:
        name = preset or ("custom" if full_model else DEFAULT_PRESETS[obj_guess])
        out = str(Path("runs") / name)
    out_dir = Path(out).expanduser()

    # base: command defaults, or the saved run on --resume
    base = RunConfig(train=dict(TRAIN_DEFAULTS))
    saved_file = out_dir / RUN_FILE
    if resume and saved_file.is_file():
        try:
            saved = json.loads(saved_file.read_text())
            base = RunConfig(
                objective=saved["objective"], model_preset=saved.get("model_preset"),
                model=dict(saved.get("model") or {}),
                train={k: v for k, v in (saved.get("train") or {}).items()
                       if k not in _RUNTIME_KEYS},
                data=DataConfig(**saved.get("data") or {}),
                tokenizer=TokenizerConfig(**saved.get("tokenizer") or {}))
        except (ValueError, KeyError, TypeError) as e:
            fail(f"cannot read {saved_file} to resume from ({type(e).__name__}: {e})")
        if objective is None and preset is None:
            objective, preset = base.objective, base.model_preset
            full_model = preset is None
    objective = objective or "causal"
    if preset is None and not full_model:
        preset = DEFAULT_PRESETS[objective]

    model_over = dict(base.model) if (preset == base.model_preset
                                      and objective == base.objective) else {}
    train = dict(base.train)
    data = dataclasses.asdict(base.data)
    tok = dataclasses.asdict(base.tokenizer)
    for layer in layers:
        model_over.update(layer["model"])
        train.update(layer["train"])
        data.update(layer["data"])
        tok.update(layer["tokenizer"])

    model_cls = model_config_class(objective)
    model_over = coerce_fields(model_cls, model_over, "model")
    # training defaults that follow the number of steps and the model width (unless set)
    train = coerce_fields(TrainConfig, train, "train")
    steps = train.get("steps", DEFAULT_STEPS)
    if "warmup_steps" not in train:
        train["warmup_steps"] = min(100, steps // 10)
    if "eval_every" not in train:  # 8 evaluations (short runs: at the end only)
        train["eval_every"] = steps // 8 if steps >= 16 else 0
    if "save_every" not in train:
        train["save_every"] = train["eval_every"]
    if "lr" not in train:
        width = model_over.get("d_model", (model_cls.presets.get(preset) or {}).get("d_model"))
        if not isinstance(width, int):
            width = next((f.default for f in dataclasses.fields(model_cls)
                          if f.name == "d_model" and isinstance(f.default, int)), 768)
        train["lr"] = default_lr(width)
    if "min_lr" not in train or ("lr" in explicit["train"]
                                 and "min_lr" not in explicit["train"]):
        train["min_lr"] = train["lr"] / 10
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "distributed" not in explicit["train"]:
        train["distributed"] = "ddp" if world > 1 else "none"
    elif world > 1 and train["distributed"] == "none":
        fail(f"launched with WORLD_SIZE={world} (torchrun) but --distributed none; use ddp or "
             "fsdp, or run a single process")
    train["out_dir"] = str(out_dir)
    train["resume"] = train.get("resume", False) if resume else False
    train.setdefault("progress", True)

    tc = TrainConfig.from_dict(coerce_fields(TrainConfig, train, "train"))
    run = RunConfig(objective=objective, model_preset=preset, model=model_over,
                    train=tc.to_dict(),
                    data=DataConfig(**coerce_fields(DataConfig, data, "data")),
                    tokenizer=TokenizerConfig(**coerce_fields(TokenizerConfig, tok, "tokenizer")))
    return ResolvedRun(run, tc, out_dir, resume)


_FLAG_KEYS: dict[str, tuple[str, str]] = {
    "steps": ("train", "steps"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "out": ("train", "out_dir"), "device": ("train", "device"),
    "compile": ("train", "compile"), "precision": ("train", "precision"),
    "tensorboard": ("train", "tensorboard"),
    "seed": ("train", "seed"), "eval_every": ("train", "eval_every"),
    "distributed": ("train", "distributed"), "data": ("data", "path"),
    "val_data": ("data", "val_path"), "tokenizer": ("tokenizer", "kind"),
    "vocab_size": ("tokenizer", "vocab_size"),
}


# ---- data -----------------------------------------------------------------------------------


def load_corpus(path: str | None, text_field: str = "text") -> tuple[list[Any], str]:
    """Documents of a text file / folder / ``.jsonl`` (None: the built-in corpus) and a
    description."""
    from attnkit.data import Document, builtin_documents, load_documents, load_jsonl

    if path is None:
        docs = builtin_documents()
        return docs, "built-in corpus (Python documentation)"
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"data file not found: {p}")
    if p.is_file() and p.suffix.lower() == ".jsonl":
        texts = load_jsonl(p, text_field)
        return [Document(f"{p.name}:{i}", t) for i, t in enumerate(texts)], str(p)
    return load_documents(p), str(p)


def _chunk_documents(docs: list[Any], block_chars: int = 2000) -> list[Any]:
    """Line-aligned blocks of about ``block_chars`` characters, so a corpus of a few files
    still splits into train and validation."""
    from attnkit.data import Document

    out = []
    for d in docs:
        block: list[str] = []
        size = k = 0
        for line in d.text.split("\n"):
            block.append(line)
            size += len(line) + 1
            if size >= block_chars:
                out.append(Document(f"{d.title}#{k}", "\n".join(block)))
                block, size, k = [], 0, k + 1
        if any(s.strip() for s in block):
            out.append(Document(f"{d.title}#{k}", "\n".join(block)))
    return out


def split_corpus(docs: list[Any], val_fraction: float, seed: int = 0
                 ) -> tuple[list[Any], list[Any]]:
    """Train / validation documents: by document (:func:`~attnkit.data.split_documents`);
    a corpus of fewer than 20 documents is first cut into ~2000-character line-aligned
    blocks; a single block is split by characters."""
    from attnkit.data import Document, split_documents

    if val_fraction == 0:
        return list(docs), []
    pieces = docs if len(docs) >= 20 else _chunk_documents(docs)
    if len(pieces) >= 2:
        return split_documents(pieces, val_fraction, seed)
    text = "\n\n".join(d.text for d in docs)
    cut = max(1, min(len(text) - 1, round(len(text) * (1 - val_fraction))))
    title = docs[0].title if docs else "text"
    return [Document(f"{title}#train", text[:cut])], [Document(f"{title}#val", text[cut:])]


def _corpus_key(data: DataConfig) -> str:
    """Identifies the corpus and its split, for reusing token files."""
    from attnkit.data.corpus import TARGET_CHARS

    def stat_key(path: str) -> str:
        p = Path(path).expanduser().resolve()
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        h = hashlib.sha256()
        for f in files:
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return f"{p}:{h.hexdigest()[:16]}"

    src = (f"builtin:{sys.implementation.name}-{sys.version.split()[0]}:{TARGET_CHARS}"
           if data.path is None else stat_key(data.path))
    split = (f"val={stat_key(data.val_path)}" if data.val_path
             else f"frac={data.val_fraction}:seed={data.split_seed}")
    return f"v1|{src}|{split}|field={data.text_field}"


def _auto_tokenizer_kind(objective: str, preset: str | None) -> str:
    if objective == "mlm":
        return "wordpiece"
    if objective == "causal" and preset in ("char-gpt", None):
        return "char"
    return "bpe"


def make_tokenizer(cfg: TokenizerConfig, objective: str, preset: str | None,
                   train_texts: list[str], all_texts: list[str]) -> Any:
    from attnkit.data import CharTokenizer, load_tokenizer, train_bpe, train_wordpiece

    kind = _auto_tokenizer_kind(objective, preset) if cfg.kind == "auto" else cfg.kind
    if kind == "char":
        return CharTokenizer.train(all_texts)  # every character: nothing is unknown
    if kind == "bpe":
        return train_bpe(train_texts, cfg.vocab_size)
    if kind == "wordpiece":
        return train_wordpiece(train_texts, cfg.vocab_size, cfg.lowercase)
    p = Path(kind).expanduser()
    if not p.exists():
        fail(f"unknown tokenizer {kind!r}: use char, bpe, wordpiece or the path of a saved "
             "tokenizer (a directory with tokenizer.json, or the file)")
    return load_tokenizer(p)


@dataclass
class Prepared:
    tokenizer: Any
    model: Any
    train_source: Any
    val_source: Any | None
    describe: list[str]
    sample_prompt: str | None = None
    sample_source: str | None = None  # seq2seq: an input to translate after training


def _model_config(run: RunConfig, tok: Any) -> Any:
    """The model config: preset + overrides (or the full [model] section), with the
    vocabulary and special ids taken from the tokenizer."""
    cls = model_config_class(run.objective)
    fields = dict(cls.presets[run.model_preset]) if run.model_preset else {}
    fields.update(run.model)
    fields.pop("family", None)
    want = int(fields.get("vocab_size") or 0) if "vocab_size" in run.model else 0
    if want and want < tok.vocab_size:
        fail(f"model.vocab_size={want} is smaller than the tokenizer's {tok.vocab_size} tokens")
    fields["vocab_size"] = want or tok.vocab_size
    if run.objective == "mlm":
        if tok.mask_id is None:
            fail(f"the {tok.kind} tokenizer has no mask token, which MLM needs")
        fields.setdefault("pad_token_id", tok.pad_id if tok.pad_id is not None else 0)
    if run.objective == "seq2seq":
        if tok.pad_id is None:
            fail(f"the {tok.kind} tokenizer has no pad token, which seq2seq needs")
        fields.setdefault("pad_token_id", tok.pad_id)
        fields.setdefault("decoder_start_token_id", tok.pad_id)
        fields.setdefault("eos_token_id", tok.end_id)
    missing = sorted(_required_fields(cls) - set(fields))
    if missing:
        fail(f"[model] is missing {missing} (or name a model_preset; valid: "
             f"{', '.join(sorted(cls.presets))})")
    return cls.from_dict(fields)


def _check_resume(ckpt: Path, cfg: Any, architecture: str) -> None:
    from attnkit.train.checkpoint import read_config

    saved = read_config(ckpt)
    mine = cfg.to_dict()
    if saved.get("architecture") not in (None, architecture):
        fail(f"--resume: {ckpt} holds a {saved['architecture']}, the requested model is a "
             f"{architecture}; train into another --out or drop --resume")
    if saved["model"] != mine:
        diff = sorted(k for k in set(mine) | set(saved["model"])
                      if mine.get(k) != saved["model"].get(k))
        parts = ", ".join(f"{k} (checkpoint {saved['model'].get(k)!r}, requested "
                          f"{mine.get(k)!r})" for k in diff)
        fail(f"--resume: the model config in {ckpt / 'config.json'} does not match the "
             f"requested model: {parts}; resume with the run's settings, or train into "
             "another --out")


def _resume_checkpoint(tc: Any) -> Path:
    from attnkit.train.checkpoint import resolve_checkpoint

    path = Path(tc.out_dir) / "last" if tc.resume is True else Path(str(tc.resume))
    try:
        return resolve_checkpoint(path)
    except FileNotFoundError:
        fail(f"--resume: no checkpoint to resume from at {path} (train without --resume "
             "first, or point --out at the run)")


def prepare(res: ResolvedRun, dist: Any) -> Prepared:
    """Corpus, tokenizer, token files, batch sources and the model (rank 0 builds the
    tokenizer and token files; the other ranks wait and read them)."""
    from attnkit.data import load_tokenizer
    from attnkit.models.registry import build_model
    from attnkit.train import distributed as D
    from attnkit.train import rng
    from attnkit.train.checkpoint import tokenizer_dir

    run, tc = res.run, res.train
    data_dir = res.out_dir / "data"
    tok = None
    ckpt = None
    if res.resume:
        ckpt = _resume_checkpoint(tc)
        tdir = tokenizer_dir(ckpt)
        if tdir is None:
            fail(f"--resume: {ckpt} has no tokenizer/; cannot continue its data pipeline")
        tok = load_tokenizer(tdir)

    if run.objective == "seq2seq":
        return _prepare_seq2seq(res, dist, tok, ckpt)

    docs, where = load_corpus(run.data.path, run.data.text_field)
    if run.data.val_path:
        train_docs = docs
        val_docs, _ = load_corpus(run.data.val_path, run.data.text_field)
    else:
        train_docs, val_docs = split_corpus(docs, run.data.val_fraction, run.data.split_seed)
    if not train_docs:
        fail(f"no training documents left after the validation split of {where}")
    if tok is None:
        if dist.is_main:
            tok = make_tokenizer(run.tokenizer, run.objective, run.model_preset,
                                 [d.text for d in train_docs],
                                 [d.text for d in train_docs + val_docs])
            tok.save(data_dir / "tokenizer")
        D.barrier(dist)
        if tok is None:
            tok = load_tokenizer(data_dir / "tokenizer")
    cfg = _model_config(run, tok)
    arch = ARCHITECTURES[run.objective]
    if ckpt is not None:
        _check_resume(ckpt, cfg, arch)
    rng.seed_everything(tc.seed)  # the initial weights follow the seed (DDP: rank 0's)
    model = build_model(cfg, arch)

    from attnkit.data import CausalLMBatches, MaskedLMBatches, TokenFile

    key = _corpus_key(run.data)
    if dist.is_main:
        train_tf = TokenFile.build((d.text for d in train_docs), tok, data_dir / "train.bin",
                                   source_key=key + "|train")
        val_tf = (TokenFile.build((d.text for d in val_docs), tok, data_dir / "val.bin",
                                  source_key=key + "|val") if val_docs else None)
    D.barrier(dist)
    if not dist.is_main:
        train_tf = TokenFile.open(data_dir / "train.bin", tok)
        val_tf = TokenFile.open(data_dir / "val.bin", tok) if val_docs else None

    if run.objective == "causal":
        seq_len = run.data.seq_len or cfg.max_seq_len
        if seq_len > cfg.max_seq_len:
            fail(f"data.seq_len={seq_len} exceeds the model's max_seq_len={cfg.max_seq_len}")

        def source(tf: Any, **kw: Any) -> Any:
            return CausalLMBatches(tf, tc.batch_size, seq_len, tc.seed, **kw)
    else:
        seq_len = run.data.seq_len or min(128, cfg.max_position)
        if seq_len > cfg.max_position:
            fail(f"data.seq_len={seq_len} exceeds the model's max_position={cfg.max_position}")

        def source(tf: Any, **kw: Any) -> Any:
            return MaskedLMBatches(tf, tok, tc.batch_size, seq_len, tc.seed,
                                   mlm_probability=run.data.mlm_probability, **kw)
    try:
        train_src = source(train_tf, rank=dist.rank, world=dist.world_size)
    except ValueError as e:
        raise CliError(f"training data ({where}): {e}; use more text or a smaller "
                       "data.seq_len") from None
    try:
        val_src = source(val_tf, shuffle=False) if val_tf is not None else None
    except ValueError as e:
        raise CliError(f"validation split ({len(val_tf)} tokens): {e}; use more text, a larger "
                       "data.val_fraction, or a smaller data.seq_len") from None

    n_chars = sum(len(d.text) for d in docs)
    describe = [
        f"data: {where}: {_plural(len(docs), 'document')}, {human(n_chars)} characters -> train "
        f"{human(len(train_tf))} tokens, val {human(len(val_tf)) if val_tf else 0} tokens "
        f"(cached in {data_dir})",
        f"tokenizer: {tok.kind}, {tok.vocab_size} tokens",
        f"model: {run.model_preset or 'custom'} ({arch}, {human(_n_params(model))} "
        f"parameters), {run.objective} objective, windows of {seq_len} tokens",
    ]
    prompt = _sample_prompt(val_docs or train_docs) if run.objective == "causal" else None
    return Prepared(tok, model, train_src, val_src, describe, prompt)


def _prepare_seq2seq(res: ResolvedRun, dist: Any, tok: Any, ckpt: Path | None) -> Prepared:
    from attnkit.data import Document, Seq2SeqBatches, load_tokenizer, read_records
    from attnkit.models.registry import build_model
    from attnkit.train import distributed as D
    from attnkit.train import rng

    run, tc = res.run, res.train
    d = run.data
    if d.path is None:
        fail("--objective seq2seq needs --data PAIRS (.jsonl/.json/.csv records with "
             f"{d.source_field!r} and {d.target_field!r} fields)")

    def pairs_of(path: str) -> list[tuple[str, str]]:
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"data file not found: {p}")
        rows = read_records(p)
        for i, r in enumerate(rows):
            for f in (d.source_field, d.target_field):
                if f not in r:
                    fail(f"{p}: record {i} has no field {f!r} (fields: {sorted(r)})")
        return [(str(r[d.source_field]), str(r[d.target_field])) for r in rows]

    pairs = pairs_of(d.path)
    if d.val_path:
        train_pairs, val_pairs = pairs, pairs_of(d.val_path)
    else:
        from attnkit.data import split_documents

        idx = [Document(str(i), "") for i in range(len(pairs))]
        tr, va = split_documents(idx, d.val_fraction, d.split_seed) if d.val_fraction else \
            (idx, [])
        train_pairs = [pairs[int(x.title)] for x in tr]
        val_pairs = [pairs[int(x.title)] for x in va]
    data_dir = res.out_dir / "data"
    if tok is None:
        if dist.is_main:
            texts = [t for p in train_pairs for t in p]
            tok = make_tokenizer(run.tokenizer, "seq2seq", run.model_preset, texts,
                                 texts + [t for p in val_pairs for t in p])
            tok.save(data_dir / "tokenizer")
        D.barrier(dist)
        if tok is None:
            tok = load_tokenizer(data_dir / "tokenizer")
    cfg = _model_config(run, tok)
    if ckpt is not None:
        _check_resume(ckpt, cfg, "Seq2SeqLM")
    rng.seed_everything(tc.seed)
    model = build_model(cfg, "Seq2SeqLM")
    kw = dict(max_source_len=d.max_source_len, max_target_len=d.max_target_len,
              decoder_start_token_id=cfg.decoder_start_token_id)
    train_src = Seq2SeqBatches(train_pairs, tok, tc.batch_size, tc.seed, rank=dist.rank,
                               world=dist.world_size, **kw)
    val_src = Seq2SeqBatches(val_pairs, tok, tc.batch_size, tc.seed, shuffle=False, **kw) \
        if val_pairs else None
    describe = [
        f"data: {d.path}: {len(pairs)} pairs -> train {len(train_pairs)}, val {len(val_pairs)}",
        f"tokenizer: {tok.kind}, {tok.vocab_size} tokens",
        f"model: {run.model_preset or 'custom'} (Seq2SeqLM, {human(_n_params(model))} "
        "parameters), seq2seq objective",
    ]
    sample = (val_pairs or train_pairs)[0][0]
    return Prepared(tok, model, train_src, val_src, describe, None, sample)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _n_params(model: Any) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _sample_prompt(docs: list[Any], max_chars: int = 40) -> str:
    """The start of the first document with some substance: its first line, cut at a word
    boundary to at most ``max_chars`` characters."""
    doc = next((d for d in docs if len(d.text) >= 200), docs[0])
    line = doc.text.lstrip().split("\n", 1)[0]
    if len(line) > max_chars:
        cut = line[:max_chars].rsplit(" ", 1)[0]
        line = (cut if len(cut) >= max_chars // 2 else line[:max_chars]) + " "
    return line or doc.text[:max_chars]


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
    precision: str = typer.Option(None, "--precision", help="auto | fp32 | bf16 | fp16."),
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
    if s.interrupted:
        echo(f"continue with: attnkit train --resume --out {out}")
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
