"""Everything ``attnkit train`` builds before the first step: corpus, split, tokenizer,
token files, batch sources and the model (fresh, or checked against the checkpoint it resumes
from), as one :class:`Prepared`."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnkit.commands.common import (
    CliError,
    fail,
    human,
)
from attnkit.commands.config_files import (
    DataConfig,
    RunConfig,
    TokenizerConfig,
)
from attnkit.commands.train_config import (
    ARCHITECTURES,
    ResolvedRun,
    model_config_class,
    required_fields,
)

__all__ = ["Prepared", "prepare", "load_corpus", "split_corpus", "make_tokenizer",
           "model_config"]

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


def model_config(run: RunConfig, tok: Any) -> Any:
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
    missing = sorted(required_fields(cls) - set(fields))
    if missing:
        fail(f"[model] is missing {missing} (or name a model_preset; valid: "
             f"{', '.join(sorted(cls.presets))})")
    try:
        return cls.from_dict(fields)
    except ValueError as e:
        fail(f"model config ({run.model_preset or 'custom'} with {run.model or 'no changes'}): "
             f"{e}")


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


def prepare(res: ResolvedRun, dist: Any, *, data_dir: Path | None = None,
            tokenizer: Any | None = None) -> Prepared:
    """Corpus, tokenizer, token files, batch sources and the model (rank 0 builds the
    tokenizer and token files; the other ranks wait and read them).

    ``data_dir`` (default ``<out>/data``) holds the tokenizer and token files; runs that
    share one (``attnkit compare``) tokenize the corpus once. ``tokenizer``: use this one
    instead of training a tokenizer (a resumed run takes its checkpoint's)."""
    from attnkit.data import load_tokenizer
    from attnkit.models.registry import build_model
    from attnkit.train import distributed as D
    from attnkit.train import rng
    from attnkit.train.checkpoint import tokenizer_dir

    run, tc = res.run, res.train
    data_dir = res.out_dir / "data" if data_dir is None else data_dir
    tok = tokenizer
    ckpt = None
    if res.resume:
        ckpt = _resume_checkpoint(tc)
        tdir = tokenizer_dir(ckpt)
        if tdir is None:
            fail(f"--resume: {ckpt} has no tokenizer/; cannot continue its data pipeline")
        tok = load_tokenizer(tdir)

    if run.objective == "seq2seq":
        return _prepare_seq2seq(res, dist, tok, ckpt, data_dir)

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
    cfg = model_config(run, tok)
    arch = ARCHITECTURES[run.objective]
    if ckpt is not None:
        _check_resume(ckpt, cfg, arch)
    if run.objective == "causal":
        seq_len = run.data.seq_len or cfg.max_seq_len
        if seq_len > cfg.max_seq_len:
            fail(f"data.seq_len={seq_len} exceeds the model's max_seq_len={cfg.max_seq_len}")
    else:
        seq_len = run.data.seq_len or min(128, cfg.max_position)
        if seq_len > cfg.max_position:
            fail(f"data.seq_len={seq_len} exceeds the model's max_position={cfg.max_position}")
    _check_memory(run, cfg, arch, tc, seq_len, dist)
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
        def source(tf: Any, **kw: Any) -> Any:
            return CausalLMBatches(tf, tc.batch_size, seq_len, tc.seed, **kw)
    else:
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


def _prepare_seq2seq(res: ResolvedRun, dist: Any, tok: Any, ckpt: Path | None,
                     data_dir: Path) -> Prepared:
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
    if tok is None:
        if dist.is_main:
            texts = [t for p in train_pairs for t in p]
            tok = make_tokenizer(run.tokenizer, "seq2seq", run.model_preset, texts,
                                 texts + [t for p in val_pairs for t in p])
            tok.save(data_dir / "tokenizer")
        D.barrier(dist)
        if tok is None:
            tok = load_tokenizer(data_dir / "tokenizer")
    cfg = model_config(run, tok)
    if ckpt is not None:
        _check_resume(ckpt, cfg, "Seq2SeqLM")
    _check_memory(run, cfg, "Seq2SeqLM", tc, max(d.max_source_len, d.max_target_len), dist)
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


def _check_memory(run: RunConfig, cfg: Any, arch: str, tc: Any, seq_len: int, dist: Any
                  ) -> None:
    """Refuse, before allocating anything, a run whose weights, optimizer state and
    activations (:func:`attnkit.memory.check_training`) cannot fit on the device."""
    from attnkit.memory import check_training

    given = ", ".join(f"model.{k}={v!r}" for k, v in run.model.items()) or \
        f"preset {run.model_preset}"
    check_training(cfg, arch, batch=tc.batch_size, seq_len=seq_len, device=dist.device,
                   settings=given)


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

