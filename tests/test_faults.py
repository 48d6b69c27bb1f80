"""Faults a user meets: kills mid-stage, a store that goes away after training, runs racing on a
fresh store, a partial mirror, file permissions. Each ends with the work done once and no run left
RUNNING."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import EXPERIMENT, model_uri, read_params, run, runs, start, write_params

pytestmark = pytest.mark.e2e


def kill_when(proc: subprocess.Popen[str], ready, timeout: float = 300) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (polled), failing if it ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, (
            f"ended before the kill: {proc.stdout.read() if proc.stdout else ''}"
        )
        assert time.monotonic() < deadline, "never got to the point of the kill"
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=60)


def statuses(root: Path) -> list[str]:
    """Run statuses straight from the SQLite store (no MLflow import, safe while a run writes)."""
    with sqlite3.connect(root / "mlflow.db", timeout=30) as db:
        return [row[0] for row in db.execute("SELECT status FROM runs")]


def test_killed_download_is_redone_and_leaves_nothing_behind(make_project) -> None:
    root = make_project()
    proc = start(root, "download")
    kill_when(proc, lambda: any((root / "data").glob(".raw.*.tmp")))
    assert not (root / "data" / "raw").exists()  # nothing half-extracted in place
    out = run(["python", "-m", "pipeline", "download"], root).stdout
    assert "copied from" in out and "verified and extracted" in out
    assert sorted(p.name for p in (root / "data").iterdir()) == [
        "raw"
    ]  # the killed run's temp folder is gone
    assert len(list((root / "data/raw/MNIST/raw").iterdir())) == 8  # four .gz files, four extracted


def test_killed_evaluate_is_redone_and_its_run_finishes(make_project) -> None:
    root = make_project()
    run(["dvc", "repro"], root)
    expected = (root / "metrics/eval.json").read_bytes()
    proc = start(root, "evaluate")
    kill_when(
        proc, lambda: "RUNNING" in statuses(root)
    )  # evaluate has reopened the train stage's run
    assert statuses(root) == ["RUNNING"]
    run(["python", "-m", "pipeline", "evaluate"], root)
    assert statuses(root) == ["FINISHED"]
    assert (root / "metrics/eval.json").read_bytes() == expected


def test_store_lost_after_training_then_a_rerun_finishes_without_retraining(
    make_project, mlflow_server, tmp_path: Path
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    backend, artifacts = f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts"
    url = mlflow_server(backend=backend, artifacts=artifacts)
    root = make_project({"train": {"epochs": 2, "patience": None}})
    run(["python", "-m", "pipeline", "download"], root)
    run(["python", "-m", "pipeline", "normalization-stats"], root)
    # MLflow's client would retry a refused connection for minutes; this user told it not to.
    env = {
        "MLFLOW_TRACKING_URI": url,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    }
    proc = start(root, "train", **env)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch 2/2"):  # trained; the model is not logged yet
            mlflow_server.stop(url)
            break
    rest, _ = proc.communicate(timeout=300)
    errors = [line for line in rest.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and url in errors[0], "".join(lines) + rest
    assert "Traceback" not in rest
    assert not (
        root / "models/model.pt"
    ).exists()  # nothing written for a run that did not finish...
    assert (root / "checkpoints/train.pt").is_file()  # ...but the trained weights are kept

    mlflow_server(backend=backend, artifacts=artifacts, port=int(url.rsplit(":", 1)[1]))
    again = run(["python", "-m", "pipeline", "train"], root, **env).stdout
    assert "resuming from the checkpoint after epoch 2" in again and "epoch 1/2" not in again, again
    client = MlflowClient(url)
    (only,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert only.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(only.info.run_id, "val_accuracy")] == [1, 2]
    mlflow.set_tracking_uri(url)
    model = mlflow.pyfunc.load_model(model_uri(only), dst_path=str(tmp_path))
    assert model.predict(np.zeros((1, 1, 28, 28), dtype=np.uint8)).shape == (1, 10)
    assert (root / "models/model.pt").is_file() and not (root / "checkpoints/train.pt").exists()


@pytest.mark.parametrize("n", [3])
def test_runs_racing_on_a_fresh_store_all_land(make_project, n: int) -> None:
    """Like `dvc queue start -j 3` on a fresh clone: each run in its own copy, one store at
    DVC_ROOT."""
    root = make_project()
    run(["python", "-m", "pipeline", "download"], root)
    run(["python", "-m", "pipeline", "normalization-stats"], root)
    assert not (root / "mlflow.db").exists()
    procs = []
    for i in range(n):
        copy = root / ".dvc" / "tmp" / "exps" / f"copy{i}"
        (copy / "data").mkdir(parents=True)
        (copy / "data" / "raw").symlink_to(root / "data" / "raw")
        shutil.copy(root / "data" / "stats.json", copy / "data" / "stats.json")
        params = read_params(root / "params.yaml")
        params["seed"] = i
        params["data"]["limit"] = 500
        write_params(copy / "params.yaml", params)
        procs.append(start(copy, "train", DVC_ROOT=str(root), DVC_EXP_NAME=f"race-{i}"))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, "\n".join(outputs)
    landed = runs(root)
    assert sorted(r.data.tags["dvc.exp_name"] for r in landed) == [f"race-{i}" for i in range(n)]
    assert {r.info.status for r in landed} == {"FINISHED"}
    assert not list((root / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))
