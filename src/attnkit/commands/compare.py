"""``attnkit compare``: which attention? Train N variants on the same data, tokenizer, seed,
parameter count and budget, one after another, and write a report directory.

    attnkit compare                                   # built-in corpus: dense vs the others
    attnkit compare --task mqar --kv-pairs 1,2,4      # multi-query associative recall sweep
    attnkit compare --variant dense --variant w8=model.sliding_window=8 --steps 300

Layout of ``--out`` (default ``runs/compare-<task>``)::

    report.md  report.json          the table (see compare_report), plots beside them
    loss_vs_step.png  loss_vs_time.png  quality_vs_<axis>.png  speed_vs_<axis>.png
    data/                           the corpus's shared tokenizer and token files
    runs/<point>/<variant>/         one ``attnkit train`` output directory per run, with
                                    result.json once it is measured

Rerunning the command skips finished runs and resumes an interrupted one from its last
checkpoint (exactly); ``--fresh`` retrains everything.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from attnkit.commands.common import (
    cli_errors,
    cpu_threads,
    echo,
    fail,
    human,
)
from attnkit.commands.compare_config import (
    DEFAULT_VARIANTS,
    TASK_NAMES,
    TASK_RECIPES,
    CompareSettings,
    PlannedRun,
    load_compare_file,
    parse_variants,
    plan_runs,
)
from attnkit.commands.config_files import coerce, coerce_fields, parse_set
from attnkit.commands.train_config import resolve_run

__all__ = ["compare_cmd"]

_BUILT_IN = ", ".join(DEFAULT_VARIANTS)


def _int_list(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(coerce(text, tuple[int, ...]))
    except ValueError:
        fail(f"{flag} {text!r}: expected comma-separated integers, e.g. {flag} 4,8,16")


def _split_sets(items: list[str]) -> tuple[list[str], dict[str, str]]:
    """``--set`` items of the runs, and ``compare.KEY=VALUE`` items of the comparison."""
    run_sets, compare_sets = [], {}
    for item in items:
        key, _, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if section == "compare":
            if not dot or not name:
                fail(f"--set {item!r}: expected compare.KEY=VALUE")
            compare_sets[name] = value
        else:
            run_sets.append(item)
    return run_sets, compare_sets


def _recipe(settings: CompareSettings, file_data: dict[str, Any], sets: list[str]
            ) -> dict[str, Any]:
    """The task's base run, without its model section when the user picks another preset
    (the recipe's sizes are overrides of its own preset)."""
    recipe = dict(TASK_RECIPES[settings.task]["run"])
    user_preset = "model_preset" in file_data or any(
        parse_set(s)[0] == "model_preset" for s in sets)
    if user_preset:
        recipe.pop("model_preset", None)
        recipe.pop("model", None)
    return recipe


def _check_sweep_sets(settings: CompareSettings, sets: list[str], file_data: dict) -> None:
    """A swept setting cannot also be fixed by --set / the config file."""
    if settings.task_value("seq_lens") is None:
        return
    fixed = {f"{sec}.{key}" for sec, key, _ in map(parse_set, sets) if key is not None}
    fixed |= {f"{sec}.{k}" for sec in ("data", "model") for k in file_data.get(sec, {})}
    for key in ("data.seq_len", "model.max_seq_len"):
        if key in fixed:
            fail(f"{key} is set by the sweep (--seq-lens / the task's sequence length); drop "
                 f"it from --set / the config file")


def compare_cmd(
    task: str = typer.Option(None, "--task", help=f"{' | '.join(TASK_NAMES)} (default "
                             "corpus: the built-in corpus or --data)."),
    variant: list[str] = typer.Option(  # noqa: B008
        None, "--variant", "-V", help="NAME=SECTION.KEY=VALUE (repeat a name to add "
        "overrides), NAME= for the base run, or a built-in name "
        f"({_BUILT_IN}). Default: the built-in list."),
    seq_lens: str = typer.Option(None, "--seq-lens", "-L", help="Sequence lengths to sweep, "
                                 "e.g. 64,128,256 (default: the task's)."),
    kv_pairs: str = typer.Option(None, "--kv-pairs", help="mqar / retrieval: key-value pairs "
                                 "to sweep, e.g. 4,8,16."),
    steps: int = typer.Option(None, "--steps", min=1, help="Steps per run (default: the "
                              "task's)."),
    time_budget: float = typer.Option(None, "--time-budget", help="Seconds of training per "
                                      "run instead of a step count."),
    config: str = typer.Option(None, "--config", "-c", help="TOML/YAML/JSON file: attnkit "
                               "train's sections (the base run), a 'compare' table and "
                               "'variants.NAME' tables."),
    set_: list[str] = typer.Option(  # noqa: B008
        None, "--set", help="Override a setting of every run: SECTION.KEY=VALUE (as attnkit "
        "train), or compare.KEY=VALUE for the comparison's own settings."),
    out: str = typer.Option(None, "--out", "-o", help="Report directory (default "
                            "runs/compare-<task>)."),
    data: str = typer.Option(None, "--data", "-d", help="Corpus task: text file, folder or "
                             ".jsonl (default: the built-in corpus)."),
    seed: int = typer.Option(None, "--seed", help="Training seed of every run."),
    param_tolerance: float = typer.Option(None, "--param-tolerance", help="Largest relative "
                                          "parameter-count difference from the first variant "
                                          "(default 0.01)."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    fresh: bool = typer.Option(False, "--fresh", help="Retrain every run (discard --out's "
                               "runs and data)."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads (0 = auto: fewer "
                                "when other processes keep the cores busy)."),
) -> None:
    """Which attention? Train variants on the same data and budget; write a report.

    Example: attnkit compare --task mqar --kv-pairs 1,2,4
    """
    from attnkit.commands.compare_run import RunContext

    command = "attnkit compare " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 1 and sys.argv[1] == "compare" else "attnkit compare"
    with cli_errors():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            fail("attnkit compare trains its runs one after another in one process; launch it "
                 "without torchrun")
        file_data, file_settings, file_vars = load_compare_file(config)
        run_sets, compare_sets = _split_sets(set_ or [])
        flags = {"task": task, "seq_lens": _int_list(seq_lens, "--seq-lens"),
                 "kv_pairs": _int_list(kv_pairs, "--kv-pairs"), "time_budget": time_budget,
                 "param_tolerance": param_tolerance}
        merged = {**file_settings, **{k: v for k, v in flags.items() if v is not None},
                  **coerce_fields(CompareSettings, compare_sets, "compare")}
        settings = CompareSettings(**merged)
        if settings.time_budget is not None and steps is not None:
            fail("--steps and --time-budget are two budgets: give one (a time budget sets "
                 "each run's step count)")
        variants = parse_variants(variant) if variant else (file_vars or dict(DEFAULT_VARIANTS))
        _check_sweep_sets(settings, run_sets, file_data)
        out_dir = Path(out or f"runs/compare-{settings.task}").expanduser()
        train_flags = {"steps": steps, "seed": seed, "device": device, "data": data}
        if settings.synthetic and data is not None:
            fail(f"--data is for the corpus task; {settings.task} generates its own data")
        objective = next((v.strip() for sec, _, v in map(parse_set, run_sets)
                          if sec == "objective"), file_data.get("objective"))
        if settings.synthetic and objective not in (None, "causal"):
            fail(f"the {settings.task} task trains causal LMs; objective {objective!r} is for "
                 "text corpora (--task corpus)")
        ctx = RunContext(settings, file_data, train_flags,
                         _recipe(settings, file_data, run_sets), out_dir / "data", fresh=fresh)
    with cpu_threads(threads, device or "auto") as threads_note:
        _compare(ctx, variants, run_sets, out_dir, command, threads_note)


@dataclass
class _Plan:
    """Every run of the comparison, resolved, with what is on disk for it."""

    base: Any  # ResolvedRun of the base configuration (no variant, no sweep point)
    runs: list[PlannedRun]
    resolved: dict[Path, Any]  # run dir -> ResolvedRun
    states: dict[Path, Any]  # run dir -> RunState
    results: dict[Path, dict[str, Any] | None]  # run dir -> result.json (None: to train)


def _plan(ctx: Any, variants: dict[str, tuple[str, ...]], run_sets: list[str],
          out_dir: Path) -> _Plan:
    """Resolve the base run and every (point, variant) run; check the runs on disk."""
    from attnkit.commands import compare_run as R

    base = resolve_run(ctx.file_data, run_sets, {**ctx.flags, "out": str(out_dir)},
                       defaults=ctx.recipe)
    objective = base.run.objective
    runs = plan_runs(ctx.settings, variants, run_sets, out_dir, objective)
    resolved = {r.out_dir: R.resolve_planned(ctx, r) for r in runs}
    for r in runs:
        if resolved[r.out_dir].run.objective != objective:
            fail(f"variant {r.variant.name!r} changes the objective to "
                 f"{resolved[r.out_dir].run.objective!r} (its model_preset); every variant "
                 f"must train the {objective} objective")
    if ctx.fresh and ctx.data_dir.is_dir():
        shutil.rmtree(ctx.data_dir)
    states = {r.out_dir: R.run_state(ctx, r) for r in runs}
    for r in runs:
        if states[r.out_dir].status != "new":
            R.check_saved(ctx, r, resolved[r.out_dir])
    results = {r.out_dir: R.read_result(r) if states[r.out_dir].status == "done" else None
               for r in runs}
    return _Plan(base, runs, resolved, states, results)


def _compare(ctx: Any, variants: dict[str, tuple[str, ...]], run_sets: list[str],
             out_dir: Path, command: str, threads_note: str | None) -> None:
    import torch

    from attnkit.commands.compare_report import ReportInputs, write_report
    from attnkit.train.distributed import resolve_device

    s = ctx.settings
    with cli_errors():
        plan = _plan(ctx, variants, run_sets, out_dir)
    base, runs, results = plan.base, plan.runs, plan.results
    inputs = ReportInputs(s, runs, results, command, base.train.seed,
                          None if s.time_budget else base.train.steps,
                          str(resolve_device(base.train.device)), torch.get_num_threads())
    todo = [r for r in runs if results[r.out_dir] is None]
    budget = (f"{s.time_budget:g} s of training" if s.time_budget
              else f"{base.train.steps} steps")
    n_points = len(runs) // len(variants)
    echo(f"compare: {s.task}, {len(variants)} variant{'s' * (len(variants) > 1)} x "
         f"{n_points} point{'s' * (n_points > 1)}, {budget} per run, seed {base.train.seed}; "
         f"{len(runs) - len(todo)} of {len(runs)} runs done ({out_dir})")
    if threads_note:
        echo(threads_note)
    interrupted = False
    try:
        with cli_errors():
            preps = _check_parameters(ctx, plan)
        for i, r in enumerate(todo, 1):
            echo(f"\n[{i}/{len(todo)}] {r.point.describe()} | {r.variant.name}: "
                 f"{r.variant.label()} -> {r.out_dir}")
            with cli_errors():
                result = _run_one(ctx, r, plan.resolved[r.out_dir], plan.states[r.out_dir],
                                  preps.pop(r.out_dir))
            if result is None:
                interrupted = True
                break
            results[r.out_dir] = result
            write_report(inputs, out_dir, plots=False)  # the table grows run by run
            _print_result(s, result)
    except KeyboardInterrupt:
        interrupted = True
    report = write_report(inputs, out_dir)
    _print_summary(report)
    echo(f"report: {out_dir / 'report.md'} (and report.json, "
         f"{len(report['files']['plots'])} plots)")
    if interrupted:
        echo(f"interrupted: rerun the same command to continue ({out_dir})")
        raise typer.Exit(130)


def _print_result(s: CompareSettings, result: dict[str, Any]) -> None:
    from attnkit.commands.compare_report import metric_of

    name, _ = metric_of(s)
    q = result["quality"]
    echo(f"  {name} {q[name]:.4f}" + ("" if s.synthetic else f", perplexity {q['val_ppl']:.2f}")
         + f"; {human(result['train_tokens_per_s'] or 0)} train tokens/s"
         + (f", {human(result['decode_tokens_per_s'])} decode tokens/s"
            if result["decode_tokens_per_s"] else ""))


def _check_parameters(ctx: Any, plan: _Plan) -> dict[Path, Any]:
    """Prepare every run still to train (data, model) and check that the parameter counts
    of each sweep point agree within the tolerance, before anything trains."""
    from attnkit.commands import compare_run as R

    preps = {}
    counts: dict[Path, int] = {}
    for r in plan.runs:
        done = plan.results[r.out_dir]
        if done is not None:
            counts[r.out_dir] = done["parameters"]
            continue
        if plan.states[r.out_dir].status == "interrupted":
            plan.resolved[r.out_dir] = _resumed(ctx, r, plan.states[r.out_dir])
        preps[r.out_dir] = R.prepare_planned(ctx, r, plan.resolved[r.out_dir])
        counts[r.out_dir] = R.parameter_count(preps[r.out_dir].model)
    tol = ctx.settings.param_tolerance
    for point in dict.fromkeys(r.point for r in plan.runs):
        group = [r for r in plan.runs if r.point == point]
        ref = counts[group[0].out_dir]
        if any(abs(counts[r.out_dir] - ref) > tol * ref for r in group):
            listing = ", ".join(f"{r.variant.name} {counts[r.out_dir]:,} "
                                f"({100 * (counts[r.out_dir] - ref) / ref:+.2f}%)"
                                for r in group)
            fail(f"parameter counts differ by more than {100 * tol:g}% at "
                 f"{point.describe()}: {listing}; a comparison at equal size needs variants "
                 "of equal size (adjust their model.* settings) or a larger "
                 "--param-tolerance")
    return preps


def _resumed(ctx: Any, r: PlannedRun, state: Any) -> Any:
    """An interrupted run's configuration with ``resume``: its saved step count when a
    time budget measured it."""
    import dataclasses

    from attnkit.commands import compare_run as R

    res = R.resolve_planned(ctx, r, state.steps if ctx.settings.time_budget else None)
    res.train = dataclasses.replace(res.train, resume=True)
    res.run.train = res.train.to_dict()
    res.resume = True
    return res


def _run_one(ctx: Any, r: PlannedRun, res: Any, state: Any, prep: Any) -> dict | None:
    from attnkit.commands import compare_run as R

    s = ctx.settings
    if state.status == "new" and s.time_budget:
        per_step = R.calibrate_step_time(prep, res, s.calibration_steps)
        steps = max(1, int(s.time_budget / per_step))
        echo(f"  time budget {s.time_budget:g} s at {1000 * per_step:.3g} ms/step "
             f"(median of {s.calibration_steps}): {steps} steps")
        res = R.resolve_planned(ctx, r, steps)
    info = R.run_info(ctx, r, res, prep)
    if state.status == "interrupted":
        echo(f"  resuming from {r.out_dir / 'last'}")
    for line in prep.describe:
        echo(f"  {line}")
    return R.train_and_measure(ctx, r, res, prep, info)


def _print_summary(report: dict[str, Any]) -> None:
    from attnkit.commands.compare_report import format_table

    echo("")
    for line in format_table(report):
        echo(line)
