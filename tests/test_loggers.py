"""Trackers (`train.loggers`): MLflow against a real `mlflow server`, W&B and ClearML offline,
a failing tracker warns once and training goes on, a missing extra is one line."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvtool.cli.main import app
from cvtool.errors import CvtoolError
from cvtool.runs.loggers import Trackers, flat_params, open_loggers
from cvtool.runs.recipes import load_recipe

runner = CliRunner()
TINY = {"image_size": 8, "channels": 1, "batch_size": 32}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def history(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server` on 127.0.0.1 with a SQLite backend and local artifacts; stopped after."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    log = (root / "server.log").open("w")
    # its own process group: `mlflow server` runs uvicorn as a child, which must stop with it
    # no job runner: its eight worker processes are for GenAI jobs this test does not use
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600  # a loaded 2-core machine needs minutes for its first start
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            stop_group(server)
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    stop_group(server)
    log.close()


def stop_group(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, then SIGKILL to whatever of it is left."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait()


@pytest.mark.slow
def test_mlflow_real_server_gets_params_metric_history_and_artifacts(
        mlflow_server, make_recipe, tmp_path, digits_dir, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = make_recipe(tmp_path, digits_dir, data=TINY, name="tracked",
                         train={"epochs": 2, "max_batches": 3, "loggers": ["csv", "mlflow"],
                                "mlflow": {"uri": mlflow_server, "experiment": "cvtool-test"},
                                "log_checkpoints": "best"})
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(recipe), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("cvtool-test")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    assert json.loads((run / "tracking.json").read_text())["mlflow_run_id"] == found.info.run_id
    params = found.data.params
    assert params["train.epochs"] == "2" and params["optim.lr"] == "0.01" and params["model.blocks"] == "[8,16]"
    assert params == {k: str(v) for k, v in flat_params(load_recipe(run / "recipe.yaml").model_dump(mode="json")).items()}
    rows = history(run)
    for key in ("val/accuracy", "train/loss", "lr"):
        points = client.get_metric_history(found.info.run_id, key)
        assert [(p.step, p.value) for p in sorted(points, key=lambda p: p.step)] == \
            [(int(r["epoch"]), pytest.approx(float(r[key]))) for r in rows]
    summary = json.loads((run / "summary.json").read_text())
    assert found.data.metrics["summary.best_value"] == pytest.approx(summary["best_value"])
    top = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert top == {"summary.json", "plots", "checkpoints", "model"}
    assert {a.path for a in client.list_artifacts(found.info.run_id, "plots")} >= {"plots/loss.png", "plots/accuracy.png"}
    assert [a.path for a in client.list_artifacts(found.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert [a.path for a in client.list_artifacts(found.info.run_id, "model")] == ["model/model.onnx"]
    copy = Path(client.download_artifacts(found.info.run_id, "model/model.onnx", str(tmp_path / "download")))
    assert copy.read_bytes() == (run / "model.onnx").read_bytes()


class Recorder:
    def __init__(self, fail_at: int | None = None) -> None:
        self.rows, self.fail_at, self.status = [], fail_at, None

    def log_epoch(self, row, history) -> None:
        if self.fail_at is not None and row["epoch"] >= self.fail_at:
            raise ConnectionError("tracking server unreachable")
        self.rows.append(row["epoch"])

    def log_summary(self, summary, artifacts) -> None:
        self.summary = summary

    def close(self, status) -> None:
        self.status = status


def test_a_failing_logger_warns_once_and_the_others_go_on(tmp_path) -> None:
    warnings: list[str] = []
    broken, healthy = Recorder(fail_at=2), Recorder()
    trackers = Trackers([("mlflow", broken), ("csv", healthy)], None, warnings.append)
    for epoch in (1, 2, 3, 4):
        trackers.log_epoch({"epoch": epoch, "lr": 0.1}, [])
    trackers.close()
    assert warnings == ["logger mlflow failed (ConnectionError: tracking server unreachable); "
                        "training goes on without it"]
    assert broken.rows == [1] and healthy.rows == [1, 2, 3, 4]
    assert broken.status is None and healthy.status == "FINISHED"


def test_unreachable_mlflow_server_does_not_stop_training(make_recipe, tmp_path, digits_dir, monkeypatch) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    recipe = make_recipe(tmp_path, digits_dir, data=TINY,
                         train={"epochs": 2, "max_batches": 2, "loggers": ["csv", "mlflow"],
                                "mlflow": {"uri": f"http://127.0.0.1:{free_port()}"}})
    result = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.count("cvtool: warning: logger mlflow") == 1, result.output
    assert [r["epoch"] for r in history(tmp_path / "run")] == ["1", "2"]


@pytest.mark.parametrize("name", ["mlflow", "wandb", "clearml"])
def test_missing_extra_is_one_line(name, make_recipe, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it raises ImportError
    recipe = load_recipe(make_recipe(tmp_path, tmp_path, train={"loggers": ["csv", name]}))
    with pytest.raises(CvtoolError, match=rf"train.loggers: {name} needs the '{name}' extra"):
        open_loggers(recipe, tmp_path / "run")


def wandb_records(path: Path) -> list:
    """The records of a W&B offline `.wandb` file: LevelDB-log framing (32 KiB blocks, 7-byte
    chunk headers) of `Record` protobufs after a 7-byte ':W&B' file header."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunk, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a FULL record, or the LAST chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


@pytest.mark.slow
def test_wandb_and_clearml_offline_files_hold_the_metrics(make_recipe, tmp_path, digits_dir, monkeypatch) -> None:
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    pytest.importorskip("clearml", reason="the clearml extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("CLEARML_OFFLINE_MODE", "1")
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(tmp_path / "clearml-cache"))
    from clearml import Task

    Task.set_offline(True)  # never contacts a server
    recipe = make_recipe(tmp_path, digits_dir, data=TINY, name="offline",
                         train={"epochs": 2, "max_batches": 2, "loggers": ["csv", "wandb", "clearml"]})
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(recipe), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "cvtool: warning" not in result.output, result.output
    rows = history(run)

    (wandb_file,) = (tmp_path / "wandb-dir").glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(wandb_file)
    # a key is either flat ('val/accuracy') or nested (['val', 'accuracy']), depending on the writer
    steps = [(r.history.step.num, {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in r.history.item})
             for r in records if r.WhichOneof("record_type") == "history"]
    assert [(values.get("_step", step), values.get("val/accuracy")) for step, values in steps] == \
        [(int(r["epoch"]), pytest.approx(float(r["val/accuracy"]))) for r in rows], steps
    summary_keys = {item.key or "/".join(item.nested_key) for r in records
                    if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
    assert {"summary.best_value", "summary/best_value"} & summary_keys, summary_keys
    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert {"summary.json", "plots/loss.png"} <= {entry.path for entry in artifact.manifest.contents}

    (metrics_file,) = (tmp_path / "clearml-cache").glob("offline/*/metrics.jsonl")
    events = [event for line in metrics_file.read_text().splitlines() for event in json.loads(line)]
    accuracy = [(e["iter"], e["value"]) for e in events
                if e.get("type") == "training_stats_scalar" and (e["metric"], e["variant"]) == ("val", "accuracy")]
    assert accuracy == [(int(r["epoch"]), pytest.approx(float(r["val/accuracy"]))) for r in rows]
    assert any(e.get("metric") == "summary.best_value" or "summary.best_value" in json.dumps(e) for e in events)


@pytest.mark.slow
def test_under_torchrun_only_rank_0_logs(synthetic, make_recipe, tmp_path) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    import shutil

    from mlflow.tracking import MlflowClient

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    recipe = make_recipe(tmp_path, synthetic("multiclass", n=40, size=16), name="ddp-tracked",
                         train={"epochs": 2, "loggers": ["csv", "mlflow"]})
    out = tmp_path / "runs" / "ddp"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "cvtool", "train", str(recipe),
                           "--out", str(out), "--quiet"], env={**env, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddp-tracked")
    (found,) = client.search_runs([experiment.experiment_id])  # one run: rank 1 opened none
    points = client.get_metric_history(found.info.run_id, "val/accuracy")
    assert sorted(p.step for p in points) == [1, 2]
    assert (tmp_path / "runs" / "mlartifacts").is_dir()
