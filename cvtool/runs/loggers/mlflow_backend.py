"""MLflow: a run per cvtool run, through `MlflowClient` (no process-global active run, so the
trials of a search each get their own). URI: `train.mlflow.uri`, else $MLFLOW_TRACKING_URI,
else a SQLite store with its artifacts in the run's parent folder."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from cvtool.fileio import write_json
from cvtool.runs.layout import RunDir
from cvtool.runs.loggers.base import LOGGERS, LogContext, metric_values, need, summary_values

LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
PARAM_CHARS = 6000  # MLflow's limit on one param value


def tracking_uri(context: LogContext) -> tuple[str, Path | None]:
    """(URI, artifact folder for a new experiment: only for the default local store)."""
    uri = context.recipe.train.mlflow.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    parent = context.run_dir.resolve().parent
    return f"sqlite:///{parent / LOCAL_DB}", parent / LOCAL_ARTIFACTS


class MlflowLogger:
    def __init__(self, context: LogContext) -> None:
        need("mlflow", "mlflow", "mlflow")
        # MLflow retries an unreachable server for minutes by default; a tracker must not hold
        # training that long (a user's own setting wins)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        from mlflow.tracking import MlflowClient

        uri, artifacts = tracking_uri(context)
        self.client = MlflowClient(tracking_uri=uri)
        self.record = RunDir(context.run_dir).tracking
        name = context.recipe.train.mlflow.experiment or context.recipe.name
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(
            name, artifact_location=artifacts.as_uri() if artifacts else None)
        self.run_id = self._previous_run() if context.resumed else None
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(experiment, run_name=context.run_dir.name,
                                     tags={"cvtool.run_dir": str(context.run_dir.resolve())})
        self.run_id = run.info.run_id
        write_json(self.record, {"mlflow_run_id": self.run_id, "mlflow_uri": uri})
        self._params(context.params)

    def _previous_run(self) -> str | None:
        try:
            return json.loads(self.record.read_text(encoding="utf-8")).get("mlflow_run_id")
        except (OSError, json.JSONDecodeError):
            return None

    def _params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:PARAM_CHARS]) for k, v in params.items()]
        for start in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + PARAM_BATCH])

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_epoch(self, row: dict[str, float], history: list[dict[str, float]]) -> None:
        self._metrics(metric_values(row), int(row["epoch"]))

    def log_summary(self, summary: dict[str, Any], artifacts: list[tuple[str, Path]]) -> None:
        self._metrics(summary_values(summary), int(summary.get("epochs_run") or 0))
        for folder, path in artifacts:
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder or None)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


LOGGERS.add("mlflow", MlflowLogger)
