"""``bench run``: train and evaluate a grid of runs (methods x generators x backbones x fractions x folds)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from harness.cli import options
from harness.config.presets import resolve_preset
from harness.execution.executors import build_executor, executor_flags, executor_options
from harness.execution.tasks import Request, finish
from harness.plugins import get_registry
from harness.runs.grid import expand, load_suite, split_list
from harness.runs.resolve import ResolvedRun
from harness.runs.store import read_run, run_dirs
from harness.runs.tracking import check_tracker_choice, parse_tracker_choice
from harness.training import ddp
from harness.training.device import resolve_device


def _eta_seconds(runs: list[ResolvedRun], out: Path) -> float | None:
    """Training time of the runs still to do, from finished runs of the same method and preset in ``out``."""
    speed: dict[tuple[str, str, int], float] = {}
    for run_dir in run_dirs(out) if out.exists() else []:
        record = read_run(run_dir) or {}
        if record.get("status") == "done" and record.get("train", {}).get("iterations_per_second"):
            c = record["config"]
            speed[(c["ssl"], c["preset"], c["image_size"])] = record["train"]["iterations_per_second"]
    total = 0.0
    for run in runs:
        c = run.config
        if (read_run(out / run.name) or {}).get("status") == "done":
            continue
        its = speed.get((c["ssl"], c["preset"], c["image_size"]))
        if its is None:
            return None
        total += c["train"]["iterations"] / its
    return total


def _plan_table(runs: list[ResolvedRun], out: Path) -> tuple[Table, int]:
    table = Table(
        title=f"plan: {len(runs)} run(s) in {out}", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )
    # the id is what tells runs apart: never cut it (nor the names); only the state may wrap
    table.add_column("run id", no_wrap=True, min_width=max((len(r.run_id) for r in runs), default=6))
    for column in ("method", "generator", "backbone"):
        table.add_column(column, no_wrap=True)
    for column in ("labeled", "f/d/s", "iters"):  # f/d/s: fold, labeled-subset draw, seed
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("state", min_width=6)
    todo = 0
    for run in runs:
        previous = read_run(out / run.name)
        state = "new"
        if previous and previous.get("status") == "done":
            state = "done (skip)"
        elif previous or (out / run.name / "checkpoints" / "latest.pt").exists():
            state = "resume"
        todo += state != "done (skip)"
        c = run.config
        table.add_row(
            run.run_id, c["ssl"], c["generator"], c["backbone"], f"{c['labeled']:g}",
            f"{c['fold']}/{c['draw']}/{c['seed']}", str(c["train"]["iterations"]), state,
        )  # fmt: skip
    return table, todo


def run(
    data: str = options.data_option(),
    ssl: str = typer.Option("mgcc", "--ssl", help="SSL method(s), comma-separated."),
    generator: str = typer.Option("none", "--generator", help="Generator(s) of synthetic unlabeled images."),
    backbone: str = typer.Option("cmunet", "--backbone", help="Backbone(s), comma-separated."),
    labeled: str = typer.Option("0.25", "--labeled", help="Labeled fraction(s) of each fold's training part."),
    fold: str = typer.Option(None, "--fold", help="Test fold(s), e.g. 0,1, or all (default: the preset's)."),
    draw: str = typer.Option(None, "--draw", help="Labeled-subset draw(s) of the split, e.g. 0,1."),
    seed: str = typer.Option(None, "--seed", help="Training seed(s), e.g. 0,1,2."),
    folds_alias: str = options.alias("--folds"),
    draws_alias: str = options.alias("--label-draws"),
    seeds_alias: str = options.alias("--seeds"),
    preset: str = options.preset_option(),
    split: Path = typer.Option(None, "--split", help="Split JSON file (made on the fly when absent)."),
    out: Path = typer.Option(Path("runs"), "--out", help="Results directory."),
    suite: Path = typer.Option(None, "--suite", help="A TOML suite file describing whole grids."),
    set_: list[str] = options.set_option(),
    image_size: int = typer.Option(None, "--image-size", help="Square model input size."),
    iterations: int = typer.Option(None, "--iterations", help="Training iterations T."),
    batch: int = typer.Option(None, "--batch-size", help="Images per training batch, labeled + unlabeled (default 8)."),
    labeled_batch: int = typer.Option(None, "--labeled-batch-size", help="Labeled images per batch (default 4)."),
    batch_alias: int = options.alias("--batch"),
    labeled_batch_alias: int = options.alias("--labeled-batch"),
    in_channels: int = typer.Option(None, "--in-channels", help="1 (grey) or 3 (replicated, as published)."),
    resize: str = typer.Option(None, "--resize", help="squash (published) or pad (keeps aspect ratio)."),
    include_strata: str = typer.Option(None, "--include-strata", help="Only these strata, e.g. benign,malignant."),
    normalisation: str = typer.Option(None, "--normalisation", help="zscore (default) or published."),
    precision: str = typer.Option(
        None,
        "--precision",
        help="auto, bf16, fp16 (CUDA) or fp32 (default: the preset's). auto: bf16 where the CPU or GPU "
        "computes it natively, fp16 with a gradient scaler on GPUs without bf16, else fp32.",
    ),
    channels_last: bool = typer.Option(None, "--channels-last/--no-channels-last", help="channels_last layout."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the validation network (slow first call)."),
    device: str = options.device_option(),
    eval_resolution: str = typer.Option(None, "--eval-resolution", help="native (default) or model."),
    published_metrics: bool = typer.Option(
        False, "--published-metrics", help="Also compute the published code's metrics (its Dice, IoU, HD95)."
    ),
    metrics_alias: str = options.alias("--metrics"),
    unlabeled: str = typer.Option(None, "--unlabeled", help="real, synthetic or both (default)."),
    n_synthetic: str = typer.Option(None, "--n-synthetic", help="Synthetic images per fold: N, train or unlabeled."),
    protocol: str = typer.Option(None, "--protocol", help="kfold (default) or paper-like."),
    k: int = typer.Option(None, "--k", help="Number of folds."),
    val_from: str = typer.Option(None, "--val-from", help="train (default) or labeled."),
    deterministic: bool = typer.Option(None, "--deterministic/--no-deterministic", help="Deterministic kernels."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and stop."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    executor: str = typer.Option("local", "--executor", help="Where runs train: local, slurm or a plugin's executor."),
    jobs: int = typer.Option(None, "--jobs", help="local: runs trained at once, each in its own process (and GPU)."),
    threads: int = typer.Option(
        None, "--threads", min=1, help="torch threads per process (default: the free cores this process may use)."
    ),
    keep_resume_state: bool = typer.Option(
        False, "--keep-resume-state", help="Keep finished runs' checkpoints/latest.pt (optimiser and RNG state)."
    ),
    gpus: int = typer.Option(1, "--gpus", min=1, help="Processes (GPUs) per run; > 1 trains each run with DDP."),
    sync_bn: bool = typer.Option(None, "--sync-bn/--no-sync-bn", help="SyncBatchNorm with --gpus > 1 (default: CUDA)."),
    wait: bool = typer.Option(False, "--wait", help="Block until submitted runs have finished (slurm)."),
    exec_set: list[str] = typer.Option(None, "--exec-set", help="KEY=VALUE option of the executor (docs/scaling.md)."),
    tracker: str = typer.Option(
        None, "--tracker", help="Experiment trackers each run feeds: tensorboard, mlflow (comma list); off by default."
    ),
    tracker_set: list[str] = typer.Option(
        None, "--tracker-set", help="TRACKER.KEY=VALUE tracker option, e.g. mlflow.tracking_uri=http://host:5000."
    ),
    retrain_changed: bool = typer.Option(
        False, "--retrain-changed", help="Train runs again whose dataset or split changed since (else refused)."
    ),
    restart_damaged: bool = typer.Option(
        False, "--restart-damaged", help="Move a damaged checkpoints/latest.pt aside and train that run from scratch."
    ),
    executor_values: dict[tuple[str, str], Any] | None = None,
) -> None:
    """Train and evaluate every run of a grid; finished runs are skipped, interrupted ones resume."""
    fold, fold_flag = options.either(fold, "--fold", folds_alias, "--folds")
    draw, draw_flag = options.either(draw, "--draw", draws_alias, "--label-draws")
    seed, seed_flag = options.either(seed, "--seed", seeds_alias, "--seeds")
    batch, batch_flag = options.either(batch, "--batch-size", batch_alias, "--batch")
    labeled_batch, labeled_flag = options.either(
        labeled_batch, "--labeled-batch-size", labeled_batch_alias, "--labeled-batch"
    )
    if metrics_alias is not None:
        if metrics_alias != "published":
            raise typer.BadParameter(f"--metrics {metrics_alias!r}: bench run only knows --published-metrics")
        published_metrics = True
    # soft_wrap: a log line stays one line in a log file (rich would wrap it at 80 columns)
    console = Console(quiet=not ddp.env_rank_zero(), soft_wrap=True)  # under torchrun, rank 0 speaks for all
    runner = build_executor(executor, executor_options(executor, jobs, executor_values or {}, exec_set))
    trackers = check_tracker_choice(parse_tracker_choice(tracker, tracker_set), get_registry(), console.print)
    cuda = resolve_device(device).type == "cuda"
    base: dict[str, Any] = {
        "data": data,
        "split_file": str(split) if split else None,
        "image_size": image_size,
        "iterations": iterations,
        "in_channels": in_channels,
        "resize": resize,
        "include_strata": split_list(include_strata),
        "normalisation": normalisation,
        "precision": precision,
        "channels_last": channels_last,  # None: the run default (on)
        "compile": compile_ or None,
        "eval_resolution": eval_resolution,
        "published_metrics": published_metrics or None,
        "unlabeled": unlabeled,
        "n_synthetic": n_synthetic,
        "protocol": protocol,
        "k": k,
        "val_from": val_from,
        "deterministic": deterministic,
    }
    if labeled_batch is not None:
        base["labeled_batch"] = labeled_batch
    if batch is not None:
        lab = labeled_batch or 4
        if batch <= lab:
            raise typer.BadParameter(f"{batch_flag} {batch} must exceed {labeled_flag} {lab}")
        base["unlabeled_batch"] = batch - lab
    base = {key: value for key, value in base.items() if value is not None}
    axes = {
        "ssl": split_list(ssl),
        "generator": split_list(generator),
        "backbone": split_list(backbone),
        "labeled": split_list(labeled),
        "fold": split_list(fold),
        "draw": split_list(draw),
        "seed": split_list(seed),
    }
    flags = {"ssl": "--ssl", "generator": "--generator", "backbone": "--backbone", "labeled": "--labeled",
             "fold": fold_flag, "draw": draw_flag, "seed": seed_flag}  # fmt: skip
    if suite is not None:
        cli_axes = {a: v for a, v in axes.items() if v}
        grids = load_suite(suite, base, set_ or [])
        runs: list[ResolvedRun] = []
        for suite_base, suite_axes, overrides in grids:
            suite_base["preset"] = resolve_preset(suite_base.get("preset", preset), cuda)
            for axis, value in cli_axes.items():
                if axis in ("fold", "draw", "seed"):
                    suite_axes[axis] = value
            runs += expand(suite_base, suite_axes, overrides, flags=flags)
        runs = list({r.run_id: r for r in runs}.values())
    else:
        base["preset"] = resolve_preset(preset, cuda)
        if preset == "auto":
            console.print(f"preset auto -> [bold]{base['preset']}[/bold] ({'CUDA' if cuda else 'no CUDA: CPU'})")
        runs = expand(base, axes, set_ or [], flags=flags)
    table, todo = _plan_table(runs, out)
    console.print(table)
    for rule in dict.fromkeys(f"T = {r.config['train']['iterations']}: {r.iterations_rule}" for r in runs):
        console.print(rule)
    eta = _eta_seconds(runs, out)
    console.print(
        f"{todo} of {len(runs)} run(s) to train; ETA "
        + (f"{eta / 60:.0f} min of training" if eta is not None else "unknown (no finished run of these kinds yet)")
    )
    if dry_run:
        console.print("--dry-run: stopping here")
        return
    request = Request(
        runs, out, device, gpus, sync_bn, wait, show_progress=not quiet, log=console.print, trackers=trackers,
        retrain_changed=retrain_changed, restart_damaged=restart_damaged, threads=threads,
        keep_resume_state=keep_resume_state,
    )  # fmt: skip
    finish(runner.submit(request), out, console.print)


def with_executor_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with every registered executor's own options (``--slurm-partition`` ...) added.

    The executors declare them (``Executor.cli_options``); their values reach ``command`` as
    ``executor_values``, {(executor, parameter): value}.
    """
    flags = executor_flags()
    signature = inspect.signature(command)
    hints = typing.get_type_hints(command)

    def run_command(**kwargs: Any) -> None:
        values = {(f.executor, f.param): kwargs.pop(f.dest) for f in flags}
        command(**kwargs, executor_values=values)

    params = [p for name, p in signature.parameters.items() if name != "executor_values"]
    params += [
        inspect.Parameter(f.dest, inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, f.flag, help=f.help),
                          annotation=f.type)
        for f in flags
    ]  # fmt: skip
    run_command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    run_command.__annotations__ = {
        **{k: v for k, v in hints.items() if k not in ("executor_values", "return")},
        **{f.dest: f.type for f in flags},
    }
    run_command.__doc__, run_command.__name__ = command.__doc__, command.__name__
    return run_command


def register(app: typer.Typer) -> None:
    app.command("run")(with_executor_options(run))
