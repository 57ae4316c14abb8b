"""The ``attnkit compare`` report directory: ``report.json`` (schema below), ``report.md``
(the same table as Markdown) and PNG plots.

``report.json`` (``"format": "attnkit-compare"``, ``"version": 1``)::

    command, created          the command line and the time the report was written
    settings                  the CompareSettings (task, sweep, budget, tolerances, ...)
    metric                    {"name": "accuracy" | "val_loss", "higher_is_better": bool}
    budget                    {"kind": "steps" | "time", "steps": int | null,
                               "seconds": float | null}
    seed, param_tolerance
    variants                  [{"name", "set": ["SECTION.KEY=VALUE", ...]}]
    points                    [{"seq_len", "kv_pairs"}]
    runs                      one per (point, variant): {"variant", "point", "status"
                              ("done" | "pending"), "dir", and when done: "parameters",
                              "steps", "batch_size", "tokens_per_step", "train_s",
                              "train_tokens_per_s", "decode_tokens_per_s", "decode",
                              "train_peak_bytes", "decode_peak_bytes", "quality" {...},
                              "final_train_loss", "device"}
    machine                   {"device", "threads", "torch", "python", "cpus"}
    files                     {"markdown", "plots": [...]}

Plots: ``loss_vs_step.png`` and ``loss_vs_time.png`` (validation loss per variant, one panel
per sweep point; training seconds exclude evaluation); with several sweep points
``quality_vs_<axis>.png`` (``seq_len``, ``kv_pairs``) and with several lengths
``speed_vs_seq_len.png`` (training and decoding tokens/s).
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attnkit.commands.common import human, write_json
from attnkit.commands.compare_config import CompareSettings, PlannedRun, Point
from attnkit.fileio import atomic_file, atomic_write_text

__all__ = ["FORMAT", "VERSION", "ReportInputs", "build_report", "write_report", "metric_of",
           "format_table"]

FORMAT, VERSION = "attnkit-compare", 1


@dataclass
class ReportInputs:
    settings: CompareSettings
    runs: list[PlannedRun]
    results: dict[Path, dict[str, Any] | None]  # run dir -> result.json (None: pending)
    command: str
    seed: int
    steps: int | None  # the step budget (None with a time budget)
    device: str
    threads: int


def metric_of(settings: CompareSettings) -> tuple[str, bool]:
    """The headline metric and whether higher is better."""
    return ("accuracy", True) if settings.synthetic else ("val_loss", False)


def build_report(inp: ReportInputs, out_dir: Path, plots: Sequence[str] = ()) -> dict[str, Any]:
    import torch

    s = inp.settings
    name, higher = metric_of(s)
    variants = {}
    for r in inp.runs:
        variants.setdefault(r.variant.name, list(r.variant.sets))
    points = []
    for r in inp.runs:
        if r.point.to_dict() not in points:
            points.append(r.point.to_dict())
    runs = []
    for r in inp.runs:
        res = inp.results.get(r.out_dir)
        entry = {"variant": r.variant.name, "point": r.point.to_dict(),
                 "status": "pending" if res is None else "done",
                 "dir": str(r.out_dir.relative_to(out_dir))}
        if res is not None:
            entry.update({k: v for k, v in res.items() if k not in ("variant", "point", "set")})
        runs.append(entry)
    return {
        "format": FORMAT, "version": VERSION, "command": inp.command,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": s.to_dict(), "metric": {"name": name, "higher_is_better": higher},
        "budget": {"kind": "time" if s.time_budget else "steps",
                   "steps": None if s.time_budget else inp.steps, "seconds": s.time_budget},
        "seed": inp.seed, "param_tolerance": s.param_tolerance,
        "variants": [{"name": k, "set": v} for k, v in variants.items()],
        "points": points, "runs": runs,
        "machine": {"device": inp.device, "threads": inp.threads,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "cpus": _cpus()},
        "files": {"markdown": "report.md", "plots": list(plots)},
    }


def _cpus() -> int:
    from attnkit.commands.common import available_cores

    return available_cores()


# ---- markdown -------------------------------------------------------------------------------


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x: Any, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _rate(x: Any) -> str:
    return "-" if not x else human(x)


def _mib(x: Any) -> str:
    return "-" if x is None else f"{x / 2**20:.1f} MiB"


def _point_label(point: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """``seq_len 64, kv_pairs 8``; a corpus run at its own length shows that length."""
    if point["seq_len"] is None:
        done = next((r for r in runs if r["point"] == point and r["status"] == "done"), None)
        if done is not None:
            return Point(done["tokens_per_step"] // done["batch_size"],
                         point["kv_pairs"]).describe()
    return Point(**point).describe()


def format_table(report: dict[str, Any]) -> list[str]:
    """The Markdown table of every run (pending ones marked)."""
    synthetic = report["settings"]["task"] != "corpus"
    quality = (["accuracy", "exact match", "answer loss"] if synthetic
               else ["val loss", "perplexity"])
    head = ["point", "variant", "settings", "parameters", *quality, "train tokens/s",
            "decode tokens/s", "train peak", "decode peak", "steps", "train time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["runs"]:
        point = _point_label(r["point"], report["runs"])
        sets = next(v["set"] for v in report["variants"] if v["name"] == r["variant"])
        settings = "<br>".join(f"`{x}`" for x in sets) or "(base run)"
        if r["status"] != "done":
            lines.append("| " + " | ".join([point, r["variant"], settings, "pending"]
                                            + [""] * (len(head) - 4)) + " |")
            continue
        q = r["quality"]
        qcols = ([_pct(q.get("accuracy")), _pct(q.get("exact_match")),
                  _num(q.get("val_loss"), 4)] if synthetic
                 else [_num(q.get("val_loss"), 4), _num(q.get("val_ppl"), 2)])
        lines.append("| " + " | ".join([
            point, r["variant"], settings, human(r["parameters"]), *qcols,
            _rate(r.get("train_tokens_per_s")), _rate(r.get("decode_tokens_per_s")),
            _mib(r.get("train_peak_bytes")), _mib(r.get("decode_peak_bytes")),
            str(r["steps"]), "-" if r.get("train_s") is None else f"{r['train_s']:.1f} s",
        ]) + " |")
    return lines


def _sweep_tables(report: dict[str, Any]) -> list[str]:
    """Headline metric per variant (rows) and sweep value (columns), for each swept axis."""
    out: list[str] = []
    name = report["metric"]["name"]
    for axis in _axes(report):
        values = sorted({p[axis] for p in report["points"]})
        others = sorted({tuple((k, v) for k, v in p.items() if k != axis)
                         for p in report["points"]})
        out += ["", f"**{name.replace('_', ' ')} vs {axis}**", "",
                "| variant | " + " | ".join(f"{axis} {v}" for v in values) + " |",
                "|---|" + "---|" * len(values)]
        for variant in (v["name"] for v in report["variants"]):
            for other in others:
                label = variant + "".join(f", {k} {v}" for k, v in other if v is not None
                                          and len(others) > 1)
                cells = []
                for v in values:
                    point = {axis: v, **dict(other)}
                    run = next((r for r in report["runs"] if r["variant"] == variant
                                and r["point"] == point), None)
                    m = None if run is None or run["status"] != "done" else \
                        run["quality"].get(name)
                    cells.append(_pct(m) if name == "accuracy" else _num(m, 4))
                out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def _markdown(report: dict[str, Any]) -> str:
    t = report["settings"]
    b = report["budget"]
    budget = (f"{b['seconds']:g} s of training per run (step counts measured per variant)"
              if b["kind"] == "time" else f"{b['steps']} steps per run")
    m = report["machine"]
    pending = sum(r["status"] != "done" for r in report["runs"])
    lines = [f"# attnkit compare: {t['task']}", "", f"    {report['command']}", "",
             f"- budget: {budget}; seed {report['seed']}; every variant trains on the same "
             "data and tokenizer",
             f"- parameter counts agree within {100 * report['param_tolerance']:g}% of the "
             "first variant's",
             f"- machine: {m['device']}, {m['threads']} thread{'s' * (m['threads'] != 1)}, "
             f"torch {m['torch']}; "
             f"written {report['created']}",
             "- quality on the whole validation set; tokens/s over the training steps "
             "(evaluation excluded) and over the incremental decoding steps (greedy, "
             "cache); peak = live tensor bytes (parameters included)"]
    if pending:
        lines.append(f"- **{pending} run{'s' if pending > 1 else ''} pending** (rerun the "
                     "same command to continue)")
    lines += ["", *format_table(report), *_sweep_tables(report), ""]
    for plot in report["files"]["plots"]:
        lines += [f"![{Path(plot).stem.replace('_', ' ')}]({plot})", ""]
    return "\n".join(lines)


# ---- plots ----------------------------------------------------------------------------------


def _axes(report: dict[str, Any]) -> list[str]:
    return [a for a in ("seq_len", "kv_pairs")
            if len({p[a] for p in report["points"] if p[a] is not None}) > 1]


def _save(fig: Any, path: Path) -> None:
    with atomic_file(path) as f:  # a killed run leaves no truncated image
        fig.savefig(f, format="png")


def _figure(n_panels: int, width: float = 4.2, height: float = 3.4) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, n_panels)
    rows = -(-n_panels // cols)
    fig = Figure(figsize=(width * cols, height * rows), dpi=100)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]


def _loss_plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    from attnkit.commands.compare_measure import train_time_axis
    from attnkit.train.metrics import read_metrics

    points = report["points"]
    written = []
    for xname, fname in (("step", "loss_vs_step.png"), ("time", "loss_vs_time.png")):
        fig, axes = _figure(len(points))
        drawn = False
        for ax, point in zip(axes, points, strict=True):
            for i, r in enumerate(x for x in report["runs"] if x["point"] == point):
                records = read_metrics(out_dir / r["dir"] / "metrics.jsonl")
                when = train_time_axis(records)
                val = [(x["step"], x["val_loss"]) for x in records
                       if x.get("kind") == "eval" and x.get("val_loss") is not None]
                train = [(x["step"], x["loss"]) for x in records
                         if x.get("kind") == "train" and x.get("loss") is not None]
                if xname == "time":
                    val = [(_time_at(when, s), v) for s, v in val]
                    train = [(when[s], v) for s, v in train if s in when]
                    val = [(t, v) for t, v in val if t is not None]
                color = f"C{i}"
                if train:
                    ax.plot(*zip(*train, strict=True), color=color, alpha=0.3, lw=1)
                if val:
                    ax.plot(*zip(*val, strict=True), "o-", color=color, ms=3, lw=1.5,
                            label=r["variant"])
                    drawn = True
            ax.set_title(_point_label(point, report["runs"]), fontsize=10)
            ax.set_xlabel("step" if xname == "step" else "training time (s)")
            ax.set_ylabel("validation loss (faint: train)")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        if drawn:
            fig.tight_layout()
            _save(fig, out_dir / fname)
            written.append(fname)
    return written


def _time_at(axis: dict[int, float], step: int) -> float | None:
    """Training seconds at ``step``, interpolated between the logged steps."""
    if step in axis:
        return axis[step]
    steps = sorted(axis)
    before = [s for s in steps if s < step]
    after = [s for s in steps if s > step]
    if not after:
        return None
    s1 = after[0]
    s0, t0 = (before[-1], axis[before[-1]]) if before else (0, 0.0)
    return t0 + (axis[s1] - t0) * (step - s0) / (s1 - s0)


def _log2_axis(ax: Any, label: str, ticks: list[int]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlabel(label)


def _sweep_plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    name, higher = report["metric"]["name"], report["metric"]["higher_is_better"]
    written = []
    for axis in _axes(report):
        series: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        for r in report["runs"]:
            if r["status"] != "done":
                continue
            others = ", ".join(f"{k} {v}" for k, v in r["point"].items()
                               if k != axis and v is not None
                               and len({p[k] for p in report["points"]}) > 1)
            label = r["variant"] + (f" ({others})" if others else "")
            series.setdefault(label, []).append((r["point"][axis], r))
        if not series:
            continue
        ticks = sorted({p[axis] for p in report["points"]})
        fig, (ax,) = _figure(1, 5.5, 4)
        for label, pts in series.items():
            pts.sort(key=lambda p: p[0])
            ax.plot([p[0] for p in pts], [p[1]["quality"].get(name) for p in pts], "o-",
                    label=label)
        _log2_axis(ax, axis, ticks)
        ax.set_ylabel(name.replace("_", " ") + (" (higher is better)" if higher
                                                  else " (lower is better)"))
        if name == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        _save(fig, out_dir / f"quality_vs_{axis}.png")
        written.append(f"quality_vs_{axis}.png")
        if axis != "seq_len":  # throughput depends on the length, not on the task's content
            continue
        fig, axes = _figure(2, 5, 4)
        for ax, key, title in ((axes[0], "train_tokens_per_s", "training"),
                               (axes[1], "decode_tokens_per_s", "decoding")):
            for label, pts in series.items():
                ys = [p[1].get(key) for p in pts]
                if any(y for y in ys):
                    ax.plot([p[0] for p in pts], ys, "o-", label=label)
            _log2_axis(ax, axis, ticks)
            ax.set_ylabel(f"{title} tokens/s")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.tight_layout()
        _save(fig, out_dir / f"speed_vs_{axis}.png")
        written.append(f"speed_vs_{axis}.png")
    return written


def write_report(inp: ReportInputs, out_dir: Path, *, plots: bool = True) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and (``plots``) the plots; return the report.
    Without ``plots`` the report lists the plots already there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(inp, out_dir)
    if plots:
        try:
            drawn = _loss_plots(report, out_dir) + _sweep_plots(report, out_dir)
        except ImportError:  # matplotlib is a dependency; a broken install loses the plots
            drawn = []
    else:
        old = out_dir / "report.json"
        drawn = (json.loads(old.read_text()).get("files", {}).get("plots", [])
                 if old.is_file() else [])
        drawn = [p for p in drawn if (out_dir / p).is_file()]
    report["files"]["plots"] = drawn
    write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", _markdown(report))
    return report
