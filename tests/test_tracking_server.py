"""The pipeline against a real `mlflow server` over HTTP, and a dead one."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import DEFAULT_LR, run
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e


def test_pipeline_logs_over_http_and_registers_the_model(
    make_project, mlflow_server, tmp_path: Path
) -> None:
    url = mlflow_server(artifacts=tmp_path / "served-artifacts")
    root = make_project({"mlflow": {"register_model": "mnist-tiny"}})
    run(["dvc", "repro"], root, MLFLOW_TRACKING_URI=url)
    assert not (root / "mlflow.db").exists()  # nothing went to the local default store

    client = MlflowClient(url)
    exp = client.get_experiment_by_name("image-classification")
    (logged,) = client.search_runs([exp.experiment_id])
    assert logged.info.status == "FINISHED"
    assert (
        logged.data.params["train.lr"] == DEFAULT_LR and logged.data.params["evaluate.top_k"] == "3"
    )
    evaluation = json.loads((root / "metrics/eval.json").read_text())
    assert logged.data.metrics["test_accuracy"] == pytest.approx(evaluation["accuracy"])
    assert len([k for k in logged.data.metrics if k.startswith("test_class_accuracy/")]) == 10
    assert len(client.get_metric_history(logged.info.run_id, "val_accuracy")) == 1

    version = client.get_model_version_by_alias("mnist-tiny", "candidate")
    assert version.run_id == logged.info.run_id
    mlflow.set_tracking_uri(url)
    model = mlflow.pyfunc.load_model(
        "models:/mnist-tiny@candidate", dst_path=str(tmp_path)
    )  # over HTTP
    assert model.predict(np.zeros((3, 1, 28, 28), dtype=np.uint8)).shape == (3, 10)
    assert (tmp_path / "served-artifacts").is_dir()
