"""Weights & Biases and ClearML. Their own settings choose online or offline
(`WANDB_MODE=offline`, `CLEARML_OFFLINE_MODE=1`); W&B files go to $WANDB_DIR, else the run dir."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cvtool.runs.loggers.base import LOGGERS, LogContext, metric_values, need, summary_values


class WandbLogger:
    def __init__(self, context: LogContext) -> None:
        wandb = need("wandb", "wandb", "wandb")
        folder = Path(os.environ.get("WANDB_DIR") or context.run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.name = context.run_dir.name
        # create_new: the trials of a search run one after another in one process
        self.run = wandb.init(project=context.recipe.name, name=self.name, dir=str(folder),
                              config=context.params, reinit="create_new")

    def log_epoch(self, row: dict[str, float], history: list[dict[str, float]]) -> None:
        self.run.log(metric_values(row), step=int(row["epoch"]))

    def log_summary(self, summary: dict[str, Any], artifacts: list[tuple[str, Path]]) -> None:
        self.run.summary.update(summary_values(summary))
        if artifacts:
            artifact = self.wandb.Artifact(f"{self.name}-files", type="cvtool-run")
            for folder, path in artifacts:
                artifact.add_file(str(path), name=f"{folder}/{path.name}" if folder else path.name)
            self.run.log_artifact(artifact)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


class ClearmlLogger:
    def __init__(self, context: LogContext) -> None:
        clearml = need("clearml", "clearml", "clearml")
        # ClearML's Linux default forks a reporting subprocess; forked from a process whose other
        # threads hold locks (W&B, MLflow, loader threads) it deadlocked at close in our tests
        clearml.Task._report_subprocess_enabled = False
        # cvtool reports what it wants tracked; ClearML's hooks into torch, matplotlib, argv and
        # stdout would log every checkpoint save and plot a second time
        self.task = clearml.Task.init(project_name=context.recipe.name, task_name=context.run_dir.name,
                                      reuse_last_task_id=False, auto_connect_frameworks=False,
                                      auto_resource_monitoring=False, auto_connect_arg_parser=False,
                                      auto_connect_streams=False)
        self.task.connect(context.params, name="recipe")
        self.logger = self.task.get_logger()

    def log_epoch(self, row: dict[str, float], history: list[dict[str, float]]) -> None:
        for key, value in metric_values(row).items():
            title, _, series = key.rpartition("/")
            self.logger.report_scalar(title or key, series, value, iteration=int(row["epoch"]))
        self.logger.flush()

    def log_summary(self, summary: dict[str, Any], artifacts: list[tuple[str, Path]]) -> None:
        for key, value in summary_values(summary).items():
            self.logger.report_single_value(key, value)
        for folder, path in artifacts:
            self.task.upload_artifact(f"{folder}/{path.name}" if folder else path.name, artifact_object=path,
                                      wait_on_upload=True)
        self.logger.flush()

    def close(self, status: str) -> None:
        if status != "FINISHED":
            self.task.mark_stopped(force=True, status_message=status.lower())
        self.task.close()


LOGGERS.add("wandb", WandbLogger)
LOGGERS.add("clearml", ClearmlLogger)
