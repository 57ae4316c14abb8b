"""``attnkit generate``: text from a trained checkpoint (attnkit or Hugging Face).

One prompt streams to the terminal as it is generated; several prompts run as one left-padded
batch and print when done. A masked LM (``--objective mlm``) fills the mask tokens of each
prompt instead (``"The [MASK] statement"``; the char tokenizer's ``<mask>``): greedy with
``--temperature 0``, as ``transformers``' ``pipeline("fill-mask")`` ranks first.

A causal LM with learned positions (GPT-2 style) cannot see past its ``max_seq_len``: longer
generations slide a window over the text (the model sees the last ``max_seq_len`` tokens,
re-encoded every ``max_seq_len // 2`` new tokens; chunk ``i > 0`` samples with the seed
``mix_seed(seed, i)``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

import typer

from attnkit.commands.common import CliError, cli_errors, cpu_threads, fail, load_any

__all__ = ["generate_cmd", "generate_tokens", "sample_text", "encode_prompt"]


def _context_limit(model: Any) -> int | None:
    from attnkit.positions import LearnedPositions

    pos = getattr(model, "pos_emb", None)
    return pos.max_len if isinstance(pos, LearnedPositions) else None


def generate_tokens(model: Any, prompts: Sequence[Sequence[int]], config: Any, *,
                    stream: Callable[[int, list[int]], None] | None = None,
                    decode: Callable[[list[int]], str] | None = None) -> list[list[int]]:
    """:func:`attnkit.generate.generate`, sliding a window over the text when prompt +
    ``max_new_tokens`` exceed a learned-position model's context. Chunk ``i > 0`` samples
    with ``mix_seed(config.seed, i)`` (a seeded run stays reproducible)."""
    from attnkit.data import mix_seed
    from attnkit.generate import generate
    from attnkit.sampling import eos_ids

    limit = _context_limit(model)
    n_total = config.max_new_tokens
    longest = max(len(p) for p in prompts)
    if limit is None or longest + n_total - 1 <= limit:
        if limit is not None and longest > limit:
            prompts = [p[-limit:] for p in prompts]
        return generate(model, [list(p) for p in prompts], config, stream=stream, decode=decode)
    chunk = max(1, limit // 2)
    eos = set(eos_ids(config.eos_token_id))
    seqs = [list(p) for p in prompts]
    outs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    i = 0
    while not all(done):
        active = [b for b in range(len(prompts)) if not done[b]]
        n = min(chunk, n_total - len(outs[active[0]]))
        keep = limit - n + 1  # prompt + n - 1 positions fit the table
        seed = config.seed if config.seed is None or i == 0 else mix_seed(config.seed, i)
        cfg = dataclasses.replace(config, max_new_tokens=n, seed=seed)
        row_stream = None
        if stream is not None:
            def row_stream(row: int, toks: list[int], _active: list[int] = active) -> None:
                stream(_active[row], toks)
        res = generate(model, [seqs[b][-keep:] for b in active], cfg, stream=row_stream,
                       decode=decode)
        for j, b in enumerate(active):
            outs[b] += res[j]
            seqs[b] += res[j]
            stopped = len(res[j]) < n or (res[j] and res[j][-1] in eos)
            if config.stop_strings and decode is not None:
                stopped = stopped or any(s in decode(outs[b]) for s in config.stop_strings)
            if stopped or len(outs[b]) >= n_total:
                done[b] = True
        i += 1
    return outs


def sample_text(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int,
                temperature: float = 0.8, top_k: int | None = 40, seed: int | None = 0,
                stream: bool = True, stop_at_eos: bool = False) -> str:
    """Continue ``prompt`` (streamed to stdout when ``stream``); returns the continuation."""
    from attnkit.generate import stream_to_terminal
    from attnkit.sampling import GenerationConfig

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    ids = tokenizer.encode(prompt) or [_start_id(tokenizer)]
    eos = (tokenizer.eos_id,) if stop_at_eos and tokenizer.eos_id is not None else ()
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                           top_k=top_k if temperature > 0 else None, seed=seed,
                           eos_token_id=eos, pad_token_id=tokenizer.pad_id or 0)
    streamer = stream_to_terminal(decode) if stream else None
    if stream:
        sys.stdout.write(prompt)
        sys.stdout.flush()
    out = generate_tokens(model, [ids], cfg, stream=streamer, decode=decode)[0]
    if streamer is not None:
        streamer.end()
    return decode(out)


def encode_prompt(lm: Any, text: str, allow_unknown: bool = False) -> list[int]:
    """``text`` encoded by the checkpoint's tokenizer; a one-line error for text it does not
    know (unless ``allow_unknown``: then it becomes the unknown token) and for ids beyond the
    model's vocabulary (a tokenizer that belongs to another model)."""
    tok = lm.tokenizer
    unknown = tok.unknown(text)
    if unknown and not allow_unknown:
        shown = ", ".join(repr(u) for u in unknown[:12]) + (", ..." if len(unknown) > 12 else "")
        what = "characters" if tok.kind == "char" else "pieces"
        fail(f"the prompt has {len(unknown)} {what} the {tok.kind} tokenizer of {lm.path} does "
             f"not know: {shown} ({tok.vocab_size} tokens, from its training corpus); remove "
             f"them, or pass --allow-unknown to encode them as "
             f"{tok.special_tokens.get('unk', 'the unknown token')!r}")
    ids = tok.encode(text)
    lm.check_ids(ids, "the prompt")
    return ids


def _start_id(tokenizer: Any) -> int:
    """The token a document starts after (the corpus separator), for an empty prompt."""
    for i in (tokenizer.end_id, tokenizer.bos_id, tokenizer.start_id):
        if i is not None:
            return i
    raise CliError("the prompt is empty and the tokenizer has no BOS/EOS token to start from; "
                   "give a prompt")


def generate_cmd(
    prompts: list[str] = typer.Argument(  # noqa: B008
        None, help="Prompt(s). One streams as it is generated; several run as a batch. "
        "None: start a new document."),
    checkpoint: str = typer.Option(
        "runs/char-gpt", "--checkpoint", "-k",
        help="attnkit checkpoint dir, a run's out dir (uses best/, else last/), or a Hugging "
        "Face model dir with tokenizer.json."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", "-n", min=1,
                                       help="Tokens to generate per prompt."),
    temperature: float = typer.Option(0.8, min=0.0, help="Sampling temperature; 0 = greedy."),
    top_k: int = typer.Option(40, "--top-k", min=0, help="Keep the k most likely tokens "
                              "(0 = off)."),
    top_p: float = typer.Option(None, "--top-p", help="Nucleus sampling: keep the smallest "
                                "set with probability >= p."),
    min_p: float = typer.Option(None, "--min-p", help="Drop tokens below min_p x the top "
                                "probability."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty",
                                             help="CTRL repetition penalty (1 = off)."),
    stop: list[str] = typer.Option(  # noqa: B008
        None, "--stop", help="Stop a prompt's generation at this string (repeatable)."),
    seed: int = typer.Option(None, help="Seed for sampling (default: random)."),
    num_beams: int = typer.Option(1, "--num-beams", min=1,
                                  help="Beam search (seq2seq checkpoints; implies greedy)."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos",
                                    help="Keep going past the end-of-document token."),
    no_stream: bool = typer.Option(False, "--no-stream", help="Print when done instead of "
                                   "streaming."),
    allow_unknown: bool = typer.Option(False, "--allow-unknown", help="Encode prompt text the "
                                       "tokenizer does not know (characters outside a char "
                                       "vocabulary) as its unknown token instead of stopping."),
    device: str = typer.Option("cpu", help="Torch device, e.g. cpu or cuda."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0 = auto: fewer "
                                "when other processes keep the cores busy)."),
) -> None:
    """Generate text from a checkpoint: stream one prompt, or batch several.

    Example: attnkit generate --checkpoint runs/char-gpt "The with statement"
    """
    prompts = list(prompts or [])
    with cpu_threads(threads, device):
        _generate(prompts, checkpoint, max_new_tokens, temperature, top_k, top_p, min_p,
                  repetition_penalty, stop, seed, num_beams, ignore_eos, no_stream, device,
                  allow_unknown)


def _generate(prompts: list[str], checkpoint: str, max_new_tokens: int, temperature: float,
              top_k: int, top_p: float | None, min_p: float | None, repetition_penalty: float,
              stop: list[str] | None, seed: int | None, num_beams: int, ignore_eos: bool,
              no_stream: bool, device: str, allow_unknown: bool) -> None:
    from attnkit.sampling import GenerationConfig

    with cli_errors():
        lm = load_any(checkpoint, device)
        model, tok = lm.model, lm.tokenizer
        family = getattr(model.config, "family", None)
        mlm = type(model).__name__ == "BertForMaskedLM"
        if family not in ("causal_lm", "seq2seq") and not mlm:
            fail(f"{lm.path} holds a {lm.architecture}, which does not generate text; use a "
                 "causal LM (e.g. from 'attnkit train'), a seq2seq or a masked-LM checkpoint")
        if mlm:
            if num_beams > 1:
                fail("--num-beams is beam search for seq2seq checkpoints; a masked LM fills "
                     "each mask with one token")
            ids = [_masked_ids(tok, t) for t in prompts or [""]]
        if num_beams > 1 and family != "seq2seq":
            fail("--num-beams is beam search for seq2seq checkpoints; this is a causal LM "
                 "(use sampling or --temperature 0)")
        temp = 0.0 if num_beams > 1 else temperature
        if family == "causal_lm":
            eos: Any = () if ignore_eos or tok.eos_id is None else (tok.eos_id,)
        else:
            eos = () if ignore_eos else None  # None: the model's
        cfg = GenerationConfig(
            max_new_tokens=max_new_tokens, temperature=temp,
            top_k=top_k if top_k and temp > 0 else None,
            top_p=top_p if temp > 0 else None, min_p=min_p if temp > 0 else None,
            repetition_penalty=repetition_penalty, stop_strings=tuple(stop or ()),
            eos_token_id=eos, pad_token_id=tok.pad_id if tok.pad_id is not None else 0,
            seed=seed, num_beams=num_beams)
        if family == "seq2seq" and not prompts:
            fail("a seq2seq model needs an input text: attnkit generate --checkpoint DIR "
                 "\"source text\"")

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=True)

    if mlm:
        _fill(model, tok, prompts, ids, cfg)
        return
    stream = len(prompts) <= 1 and not no_stream and num_beams == 1
    if family == "causal_lm":
        texts = prompts or [""]
        with cli_errors():
            ids = [encode_prompt(lm, t, allow_unknown) or [_start_id(tok)] for t in texts]
        streamer = None
        if stream:
            from attnkit.generate import stream_to_terminal

            streamer = stream_to_terminal(decode)
            sys.stdout.write(texts[0])
            sys.stdout.flush()
        with cli_errors():
            outs = generate_tokens(model, ids, cfg, stream=streamer, decode=decode)
        if streamer is not None:
            streamer.end()
            return
    else:
        from attnkit.data import pad_sequences
        from attnkit.generate import generate_seq2seq, stream_to_terminal

        texts = prompts
        end = [] if tok.end_id is None else [tok.end_id]
        with cli_errors():
            rows = [encode_prompt(lm, t, allow_unknown) + end for t in texts]
        L = max(len(r) for r in rows)
        src = pad_sequences(rows, L, cfg.pad_token_id).to(device)
        mask = pad_sequences([[1] * len(r) for r in rows], L, 0).to(device)
        streamer = stream_to_terminal(decode) if stream else None
        with cli_errors():
            outs = generate_seq2seq(model, src, mask, cfg, stream=streamer, decode=decode)
        if streamer is not None:
            streamer.end()
            return
    for i, (prompt, out) in enumerate(zip(texts, outs, strict=True)):
        if len(texts) > 1:
            typer.echo(f"--- [{i + 1}/{len(texts)}] {prompt!r}")
        typer.echo((prompt if family == "causal_lm" else "") + decode(out))
        if len(texts) > 1 and i + 1 < len(texts):
            typer.echo("")


def _masked_ids(tok: Any, text: str) -> list[int]:
    """``start text end`` ids of a fill-mask prompt (the masked-LM batches' layout), each
    occurrence of the mask token's string being the mask id (for every tokenizer kind: the
    char tokenizer reads special-token strings as characters elsewhere)."""
    mask = tok.special_tokens.get("mask")
    if mask is None or tok.mask_id is None:
        fail(f"the {tok.kind} tokenizer has no mask token: a masked LM cannot be prompted")
    if mask not in text:
        fail(f"a masked LM fills in its mask token: put {mask!r} in the prompt, e.g. "
             f"\"The {mask} statement\"")
    body: list[int] = []
    for i, piece in enumerate(text.split(mask)):
        if i:
            body.append(tok.mask_id)
        body += tok.encode(piece)
    start = [] if tok.start_id is None else [tok.start_id]
    end = [] if tok.end_id is None else [tok.end_id]
    return start + body + end


def _fill(model: Any, tok: Any, prompts: list[str], ids: list[list[int]], cfg: Any) -> None:
    """Print each prompt with its masks filled (one padded batch)."""
    from attnkit.data import pad_sequences
    from attnkit.generate import fill_mask

    limit = model.config.max_position
    with cli_errors():
        for p, row in zip(prompts, ids, strict=True):
            if len(row) > limit:
                fail(f"the prompt {p[:30]!r}... is {len(row)} tokens; the model reads at most "
                     f"{limit}")
        L = max(len(r) for r in ids)
        dev = next(model.parameters()).device
        x = pad_sequences(ids, L, cfg.pad_token_id).to(dev)
        mask = pad_sequences([[1] * len(r) for r in ids], L, 0).to(dev)
        out = fill_mask(model, x, tok.mask_id, cfg, attention_mask=mask)
    for i, (prompt, row) in enumerate(zip(prompts, out.tolist(), strict=True)):
        if len(prompts) > 1:
            typer.echo(f"--- [{i + 1}/{len(prompts)}] {prompt!r}")
        typer.echo(tok.decode(row[:len(ids[i])], skip_special_tokens=True))
