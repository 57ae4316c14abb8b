"""``attnkit viz``: attention figures and HTML snapshots from the command line.

::

    attnkit viz --checkpoint runs/tiny/best --text "The cat sat." --png out/ [--svg]
    attnkit viz --checkpoint hf/bert --text "Paris is the [MASK] of France." --layer -1 --head 3
    attnkit viz --checkpoint hf/t5 --text "translate: hello" --decoder-text "hallo" --html a.html
    attnkit viz serve --checkpoint runs/tiny/best      # the explorer (attnkit.viz.serve_cmd)

``app`` is a Typer sub-app (the main CLI mounts it as ``viz``). Its callback does the work
when no subcommand is given; subcommands (``serve``) are registered on ``app`` by their own
modules and see the callback's options in ``ctx.obj``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from attnkit.commands.common import EXIT_USAGE, cli_errors, output_dir, output_file

if TYPE_CHECKING:
    from attnkit.viz.result import AttentionCapture

__all__ = ["app"]

app = typer.Typer(name="viz", help="Visualise attention: figures, HTML snapshots, explorer.",
                  add_completion=False, pretty_exceptions_enable=False)

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog."


def _fail(msg: str) -> typer.Exit:
    """The commands' one-line error and exit code 2 (see :mod:`attnkit.commands.common`)."""
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(EXIT_USAGE)


@app.callback(invoke_without_command=True)
def viz(
    ctx: typer.Context,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c",
        help="attnkit training checkpoint (or a run directory: its best/), or a "
        "Hugging Face model "
        "directory (with its tokenizer). Required unless a subcommand is given.")] = None,
    text: Annotated[str, typer.Option("--text", "-t", help="Input text.")] = DEFAULT_TEXT,
    decoder_text: Annotated[str | None, typer.Option(
        "--decoder-text", help="Encoder–decoder models: the decoder input.")] = None,
    png: Annotated[Path | None, typer.Option(
        "--png", help="Write head.png, grid.png, rollout.png, head_stats.png into this "
        "directory.")] = None,
    svg: Annotated[bool, typer.Option(
        "--svg", help="With --png: also write each figure as .svg.")] = False,
    layer: Annotated[int, typer.Option(
        "--layer", help="Layer of head.png and of the printed summary (negative: from the "
        "end).")] = 0,
    head: Annotated[int, typer.Option(
        "--head", help="Head of head.png and of the printed summary.")] = 0,
    kind: Annotated[str | None, typer.Option(
        "--kind", help="self | encoder | decoder | cross (default: the model's first).")] = None,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Write a self-contained explorer page (OUT.html).")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Write the capture as JSON.")] = None,
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", min=1, help="Truncate the input to this many tokens.")] = 512,
) -> None:
    """Capture a model's attention on --text; print a summary, write figures / HTML."""
    ctx.ensure_object(dict)
    ctx.obj.update(checkpoint=checkpoint, text=text, decoder_text=decoder_text,
                   max_tokens=max_tokens)
    if ctx.invoked_subcommand is not None:
        return
    if checkpoint is None:
        typer.echo(ctx.get_help())
        raise _fail("--checkpoint DIR is required")
    if svg and png is None:
        raise _fail("--svg goes with --png OUT_DIR")

    from attnkit.viz.capture import capture
    from attnkit.viz.loading import load_for_viz

    with cli_errors():  # outputs first: nothing is computed for a path that cannot be written
        png = None if png is None else output_dir(png, "--png")
        html = None if html is None else output_file(html, "--html")
        json_out = None if json_out is None else output_file(json_out, "--json")
    try:
        model, tok = load_for_viz(checkpoint)
        if tok is None:
            raise ValueError(f"{checkpoint}: a vision model; capture it from Python with "
                             "attnkit.viz.capture(model, pixel_values)")
        cap = capture(model, tok, text, max_tokens=max_tokens, decoder_text=decoder_text)
        kind = kind or cap.kinds[0]
        if kind not in cap.kinds:
            raise ValueError(f"--kind {kind!r}: this model has {cap.kinds}")
        n_layers, n_heads = (cap.model["layers_per_kind"][kind],
                             cap.model["heads_per_kind"][kind])
        if not (-n_layers <= layer < n_layers and -n_heads <= head < n_heads):
            raise ValueError(f"--layer {layer} / --head {head} out of range: {kind} attention "
                             f"has {n_layers} layers and {n_heads} heads")
        layer, head = layer % n_layers, head % n_heads
    except (FileNotFoundError, NotADirectoryError, PermissionError, ValueError,
            TypeError) as e:
        raise _fail(" ".join(str(e).split())) from None

    _summary(cap, kind, layer, head)
    if png is not None:
        for p in _figures(cap, kind, layer, head, png, svg):
            typer.echo(f"wrote {p}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(cap.to_json(), encoding="utf-8")
        typer.echo(f"wrote {json_out}")
    if html is not None:
        if importlib.util.find_spec("attnkit.viz.web") is None:
            raise _fail("--html needs the explorer module attnkit.viz.web, which is not "
                        "installed in this build")
        from attnkit.viz.web import export_html

        typer.echo(f"wrote {export_html(cap, html, title=f'attention — {checkpoint.name}')}")


def _summary(cap: AttentionCapture, kind: str, layer: int, head: int) -> None:
    from attnkit.viz.analysis import top_attended

    m = cap.model
    typer.echo(f"model: {m['architecture']} ({m['family']}), kinds {', '.join(cap.kinds)}, "
               f"{m['n_layers']} layers × {m['n_heads']} heads")
    typer.echo(f"tokens ({len(cap.tokens)}): {' '.join(cap.tokens)}")
    if cap.decoder_tokens is not None:
        typer.echo(f"decoder tokens ({len(cap.decoder_tokens)}): {' '.join(cap.decoder_tokens)}")
    for w in cap.warnings:
        typer.echo(f"warning: {w}")
    for p in cap.predictions:
        where = "" if p["position"] is None else f" at position {p['position']}"
        tops = ", ".join(f"{t['token']!r} {t['prob']:.3f}" for t in p["top"])
        typer.echo(f"prediction{where}: {tops}")
    q_tokens, k_tokens = cap.axes(kind)
    typer.echo(f"{kind} attention, layer {layer}, head {head}: most attended key per query")
    for row in top_attended(cap.head(kind, layer, head), k_tokens, 1, q_tokens):
        t = row["top"][0]
        typer.echo(f"  {row['query']:>4} {row['query_token']:<16} -> {t['index']:>4} "
                   f"{t['token']:<16} {t['weight']:.3f}")


def _figures(cap: AttentionCapture, kind: str, layer: int, head: int, out: Path, svg: bool
             ) -> list[Path]:
    from attnkit.viz import analysis, plots

    q_tokens, k_tokens = cap.axes(kind)
    figs = {"head": plots.plot_head(cap.head(kind, layer, head), q_tokens, k_tokens,
                                    f"{kind} attention — layer {layer}, head {head}")}
    for k in cap.kinds:
        figs["grid" if k == cap.kinds[0] else f"grid_{k}"] = plots.plot_grid(cap, k)
    square = kind if kind != "cross" else cap.kinds[0]  # rollout/statistics need Lq == Lk
    figs["rollout"] = plots.plot_rollout(analysis.rollout(cap.weights[square]),
                                         cap.axes(square)[0],
                                         f"attention rollout ({square}, Abnar & Zuidema 2020)")
    stats = analysis.head_stats(cap.weights[square])
    figs["head_stats"] = plots.plot_head_stats(stats["entropy"], stats.get("distance"),
                                               layers=cap.layers[square],
                                               heads=cap.heads[square])
    written = []
    for name, fig in figs.items():
        for ext in ("png", "svg") if svg else ("png",):
            written.append(plots.save_figure(fig, out / f"{name}.{ext}"))
    return written


# `attnkit viz serve` lives with the web explorer: importing its module registers it on `app`.
from attnkit.viz import serve_cmd as _serve_cmd  # noqa: E402, F401
