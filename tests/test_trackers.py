"""Experiment trackers: the hook, the fan-out that never breaks a run, the built-in TensorBoard and MLflow ones."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from test_predict import make_dataset_folder

from harness.api import TrackedRun, Tracker, TrackerError
from harness.config.params import ConfigError
from harness.errors import UserError
from harness.hookspecs import hookimpl
from harness.plugins import build_registry
from harness.runs.lifecycle import execute
from harness.runs.resolve import RunSpec, resolve
from harness.runs.run_figures import read_curves
from harness.runs.tracking import (
    TrackerChoice,
    Trackers,
    check_tracker_choice,
    curve_scalars,
    parse_tracker_choice,
)


class Recorder(Tracker):
    """Keeps every call, to compare with the files the run wrote."""

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.calls: list[tuple[str, Any]] = []
        INSTANCES[type(self).__name__] = self

    def start(self, run: TrackedRun) -> None:
        self.calls.append(("start", run))

    def log_scalars(self, rows) -> None:
        self.calls.append(("log_scalars", rows))

    def log_metrics(self, metrics, step) -> None:
        self.calls.append(("log_metrics", (metrics, step)))

    def log_figure(self, name, figure, step) -> None:
        self.calls.append(("log_figure", (name, type(figure).__name__, step)))

    def finish(self, status) -> None:
        self.calls.append(("finish", status))

    def of(self, kind: str) -> list[Any]:
        return [value for name, value in self.calls if name == kind]


class Exploding(Recorder):
    """Raises on its second logging window."""

    def log_scalars(self, rows) -> None:
        super().log_scalars(rows)
        if len(self.of("log_scalars")) == 2:
            raise RuntimeError("tracking server unreachable")


#: the last instance of each tracker class, by class name (the harness builds them inside execute)
INSTANCES: dict[str, Recorder] = {}


@hookimpl
def register_trackers(register) -> None:
    register("recorder", Recorder)
    register("exploding", Exploding)


@pytest.fixture(scope="module")
def registry():
    return build_registry(extra_plugins=[("test-trackers", types.SimpleNamespace(register_trackers=register_trackers))])


def _spec(data: Path, **kw: Any) -> RunSpec:
    return RunSpec(
        ssl="mgcc", backbone="unet", data=str(data), iterations=12, image_size=32, preset="quick", k=3,
        precision="fp32", overrides={"backbone": {"width": "4", "context_lengths": "1,1,1"}, "train": {}}, **kw,
    )  # fmt: skip


def _execute(root: Path, registry, names: tuple[str, ...], monkeypatch, log: list[str]) -> Path:
    monkeypatch.setenv("SEGBENCH_CACHE", str(root / "cache"))
    data = root / "data" if (root / "data").exists() else make_dataset_folder(root / "data")
    run = resolve(_spec(data))
    return execute(
        run, root / "runs", show_progress=False, log=log.append, device_name="cpu", registry=registry,
        trackers=TrackerChoice(names),
    )  # fmt: skip


def test_trackers_receive_the_run_and_a_raising_one_is_dropped_with_one_warning(tmp_path, registry, monkeypatch):
    """One real tiny run feeds a recorder and a tracker that raises on its second window."""
    monkeypatch.delenv("SEGBENCH_STRICT_PLUGINS", raising=False)
    log: list[str] = []
    run_dir = _execute(tmp_path, registry, ("exploding", "recorder"), monkeypatch, log)
    rec = INSTANCES["Recorder"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done"
    (started,) = rec.of("start")
    assert started.config == record["config"] and started.run_id == record["run_id"] and started.run_dir == run_dir
    # every row of curves.jsonl, in order, once: training terms (losses, lr, ramp weight) and val Dice
    logged = [row for rows in rec.of("log_scalars") for row in rows]
    assert logged == curve_scalars(read_curves(run_dir))
    train_keys = set().union(*(s for _, s in logged if "train/loss" in s))
    assert {"train/loss", "train/lr", "train/supervised", "train/consistency", "train/consistency_weight"} <= train_keys
    assert any("val/dice_lesion" in s or "val/dice_all" in s for _, s in logged)
    # one call per logging window plus one per validation
    settings = record["config"]["train"]
    windows = -(-settings["iterations"] // settings["log_every"])
    validations = -(-settings["iterations"] // settings["val_every"])
    assert len(rec.of("log_scalars")) == windows + validations
    ((metrics, step),) = rec.of("log_metrics")
    assert step == settings["iterations"] - 1
    assert metrics["test/best/dice"] == pytest.approx(record["test"]["best"]["dice"])
    assert metrics["test/last/hd95"] == pytest.approx(record["test"]["last"]["hd95"])
    assert [f[0] for f in rec.of("log_figure")] == ["learning_curves", "test_dice"]
    assert rec.calls[-1] == ("finish", "done") and rec.of("finish") == ["done"]
    # the broken tracker: one warning, dropped after its failure (and told to clean up), never called again
    warnings = [line for line in log if "warning" in line]
    assert len(warnings) == 1
    assert "'exploding' failed in log_scalars: RuntimeError: tracking server unreachable" in warnings[0]
    assert "SEGBENCH_STRICT_PLUGINS=1" in warnings[0]
    exploding = INSTANCES["Exploding"]
    assert len(exploding.of("log_scalars")) == 2 and exploding.of("finish") == ["failed"]
    assert not exploding.of("log_metrics")


def test_strict_mode_makes_a_tracker_error_fatal(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SEGBENCH_STRICT_PLUGINS", "1")
    trackers = Trackers([("exploding", Exploding(None))], print)
    trackers.start(TrackedRun("r", "id", tmp_path, tmp_path, {}))
    trackers.log_curves([{"step": 0, "loss": 1.0}])
    with pytest.raises(TrackerError, match="'exploding' failed in log_scalars.*SEGBENCH_STRICT_PLUGINS=1"):
        trackers.log_curves([{"step": 1, "loss": 0.5}])


@pytest.mark.slow
def test_strict_mode_fails_the_run(tmp_path, registry, monkeypatch) -> None:
    monkeypatch.setenv("SEGBENCH_STRICT_PLUGINS", "1")
    with pytest.raises(TrackerError, match="tracking server unreachable"):
        _execute(tmp_path, registry, ("exploding",), monkeypatch, [])
    record = json.loads(next((tmp_path / "runs").glob("mgcc_*/run.json")).read_text())
    assert record["status"] == "failed"


def test_tracker_options_are_parsed_and_checked(registry, monkeypatch) -> None:
    monkeypatch.delenv("SEGBENCH_STRICT_PLUGINS", raising=False)
    choice = parse_tracker_choice("tensorboard, mlflow,tensorboard", ["mlflow.tracking-uri=http://host:5000"])
    assert choice.names == ("tensorboard", "mlflow") and choice.options == {
        "mlflow": {"tracking_uri": "http://host:5000"}
    }
    assert not parse_tracker_choice(None, None)
    with pytest.raises(UserError, match="expected TRACKER.KEY=VALUE"):
        parse_tracker_choice("mlflow", ["tracking_uri=x"])
    with pytest.raises(UserError, match="tracker 'mlflow' is not selected; add --tracker mlflow"):
        parse_tracker_choice("tensorboard", ["mlflow.tracking_uri=x"])
    with pytest.raises(ConfigError, match="tracker mlflow has no parameter 'uri'"):
        check_tracker_choice(parse_tracker_choice("mlflow", ["mlflow.uri=x"]), registry, print)
    warned: list[str] = []
    kept = check_tracker_choice(parse_tracker_choice("tensorbord,mlflow", None), registry, warned.append)
    assert kept.names == ("mlflow",)
    assert (
        len(warned) == 1 and "unknown tracker 'tensorbord'" in warned[0] and "Did you mean 'tensorboard'" in warned[0]
    )
    monkeypatch.setenv("SEGBENCH_STRICT_PLUGINS", "1")
    with pytest.raises(UserError, match="unknown tracker 'tensorbord'"):
        check_tracker_choice(parse_tracker_choice("tensorbord", None), registry, warned.append)


@pytest.mark.parametrize(
    ("name", "modules", "install"),
    [
        ("tensorboard", ["torch.utils.tensorboard"], "pip install tensorboard"),
        ("mlflow", ["mlflow.entities", "mlflow.tracking"], "pip install mlflow-skinny"),
    ],
)
def test_a_missing_package_is_named_with_its_install_command(registry, tmp_path, monkeypatch, name, modules, install):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # what an absent package looks like to `import`
    monkeypatch.delenv("SEGBENCH_STRICT_PLUGINS", raising=False)
    log: list[str] = []
    trackers = Trackers.build(TrackerChoice((name,)), registry, log.append)
    trackers.start(TrackedRun("r", "id", tmp_path, tmp_path, {}))
    assert not trackers and len(log) == 1
    assert f"tracker {name!r} failed in start: TrackerError: the {name} tracker needs" in log[0] and install in log[0]


@pytest.mark.slow
def test_bench_run_writes_tensorboard_events_and_an_mlflow_run(tmp_path, monkeypatch) -> None:
    """`bench run --tracker tensorboard,mlflow` on the phantom; read back with TensorBoard's and MLflow's readers."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    tracking = pytest.importorskip("mlflow.tracking")
    from test_e2e import TINY, _bench, _only_run

    out = tmp_path / "runs"
    args = ["run", *TINY, "--ssl", "mgcc", "--iterations", "20", "--tracker", "tensorboard,mlflow", "--out", str(out)]
    result = _bench(args, tmp_path)
    assert "warning" not in result.stdout + result.stderr
    run_dir = _only_run(out)  # the MLflow store under the results directory adds no run
    record = json.loads((run_dir / "run.json").read_text())
    curves = read_curves(run_dir)

    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert losses == [(r["step"], pytest.approx(r["loss"])) for r in curves if "event" not in r]
    val = [(e.step, e.value) for e in events.Scalars("val/dice_lesion")]
    assert val == [(r["step"], pytest.approx(r["dice_lesion"])) for r in curves if r.get("event") == "val"]
    assert len(val) == 2 and {"train/consistency_weight", "train/lr"} <= set(events.Tags()["scalars"])
    assert events.Scalars("test/best/dice")[0].value == pytest.approx(record["test"]["best"]["dice"])
    assert {"figures/learning_curves", "figures/test_dice"} <= set(events.Tags()["images"])

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only when asked to
    client = tracking.MlflowClient((out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("segbench")
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == run_dir.name
    assert mlrun.data.tags["segbench.run_id"] == record["run_id"]
    assert mlrun.data.params["ssl"] == "mgcc" and mlrun.data.params["train.iterations"] == "20"
    assert mlrun.data.metrics["test/best/dice"] == pytest.approx(record["test"]["best"]["dice"])
    history = client.get_metric_history(mlrun.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == losses
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"segbench-run.json", "metrics.csv", "figures"} <= artifacts
