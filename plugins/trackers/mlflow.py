"""The ``mlflow`` tracker: one MLflow run per segbench run, in a local store under the results directory by default.

The default store is ``<results>/mlruns``, MLflow's file store (MLflow 3 keeps it in maintenance
mode behind ``MLFLOW_ALLOW_FILE_STORE=true``, which this tracker sets for its default store only).
View it with ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri runs/mlruns``; give a
server or database with ``--tracker-set mlflow.tracking_uri=URI`` (or ``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.api import ScalarRow, TrackedRun, Tracker, TrackerError
from harness.hookspecs import hookimpl

INSTALL = "pip install mlflow-skinny (or install segbench with its trackers extra)"
STATUS = {"done": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
#: MLflow's limits per log_batch call and per parameter value
MAX_METRICS, MAX_PARAMS, MAX_PARAM_LENGTH = 1000, 100, 6000
RUN_ID_TAG = "segbench.run_id"


@dataclass
class MLflowParams:
    """``tracking_uri``: MLflow tracking URI; empty: ``$MLFLOW_TRACKING_URI``, else ``<results>/mlruns``.

    ``experiment``: the MLflow experiment the runs go to (made when absent).
    """

    tracking_uri: str = ""
    experiment: str = "segbench"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config as ``{"train.lr": "0.01", ...}`` (MLflow parameters are flat strings)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:MAX_PARAM_LENGTH]
    return out


class MLflowTracker(Tracker):
    """Logs the flattened config as parameters, every scalar as a metric with its step, figures as artifacts."""

    Params = MLflowParams

    def __init__(self, params: MLflowParams) -> None:
        super().__init__(params)
        self.client: Any = None
        self.run_id = ""
        self.run_dir: Path | None = None

    def _uri(self, run: TrackedRun) -> str:
        uri = self.params.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if uri:
            return uri
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # our own default store, see the module docstring
        return (Path(run.out_dir) / "mlruns").resolve().as_uri()

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.params.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.params.experiment)
        except MlflowException:  # another process made it just now
            return self.client.get_experiment_by_name(self.params.experiment).experiment_id

    def start(self, run: TrackedRun) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise TrackerError(f"the mlflow tracker needs the mlflow package: {INSTALL}") from exc
        self.client = MlflowClient(tracking_uri=self._uri(run))
        self.run_dir = run.run_dir
        experiment = self._experiment()
        previous = self.client.search_runs(
            [experiment], filter_string=f"tags.`{RUN_ID_TAG}` = '{run.run_id}'", order_by=["attributes.start_time DESC"]
        )
        unfinished = [r for r in previous if r.info.status != "FINISHED"]
        if run.resumed and unfinished:  # continue the MLflow run of the interrupted attempt
            self.run_id = unfinished[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {RUN_ID_TAG: run.run_id, "segbench.run_dir": str(run.run_dir)}
        self.run_id = self.client.create_run(experiment, run_name=run.name, tags=tags).info.run_id
        params = [Param(k, v) for k, v in flatten(run.config).items()]
        for i in range(0, len(params), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=params[i : i + MAX_PARAMS])

    def _metrics(self, rows: list[ScalarRow]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for step, scalars in rows for key, value in scalars.items()]
        for i in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + MAX_METRICS])

    def log_scalars(self, rows: list[ScalarRow]) -> None:
        self._metrics(rows)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._metrics([(step, metrics)])

    def log_figure(self, name: str, figure: Any, step: int) -> None:
        self.client.log_figure(self.run_id, figure, f"figures/{name}.png")

    def finish(self, status: str) -> None:
        if self.client is None or not self.run_id:
            return
        if status == "done" and self.run_dir is not None:
            # run.json goes in under another name: a results directory is every folder holding a run.json
            if (self.run_dir / "run.json").exists():
                self.client.log_text(self.run_id, (self.run_dir / "run.json").read_text(), "segbench-run.json")
            if (self.run_dir / "metrics.csv").exists():
                self.client.log_artifact(self.run_id, str(self.run_dir / "metrics.csv"))
        self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))
        self.client = None


@hookimpl
def register_trackers(register) -> None:
    register("mlflow", MLflowTracker)
