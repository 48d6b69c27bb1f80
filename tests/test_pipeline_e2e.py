"""The whole pipeline through a real `dvc` in a temporary git repository, checked in the real MLflow
store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from helpers import EXPERIMENT, create_project, model_uri, read_params, run, runs, store

from pipeline.core.params import flatten, parse_params
from pipeline.core.tracking.provenance import param_value
from pipeline.core.yamlio import read_yaml

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Finished:
    root: Path  # a project after one whole `dvc repro`
    only: Any  # mlflow.entities.Run: the one run it logged
    evaluation: dict  # metrics/eval.json


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """One `dvc repro` of a fresh project, shared by this file's tests (in file order: the last
    ones rerun and edit it)."""
    root = create_project(tmp_path_factory.mktemp("pipeline-e2e") / "project")
    run(["dvc", "repro"], root)
    (only,) = runs(root)
    return Finished(root, only, json.loads((root / "metrics/eval.json").read_text()))


def test_repro_writes_every_output(finished: Finished) -> None:
    root, evaluation = finished.root, finished.evaluation
    for out in [
        "data/raw/MNIST/raw/train-images-idx3-ubyte",
        "data/stats.json",
        "models/model.pt",
        "models/mlflow_run.json",
        "metrics/train.json",
        "plots/train.csv",
        "metrics/eval.json",
        "plots/confusion.csv",
        "plots/per_class.csv",
        "dvc.lock",
    ]:
        assert (root / out).is_file(), out
    assert set(evaluation) >= {"accuracy", "loss", "macro_f1", "per_class_accuracy"}
    assert list(evaluation["per_class_accuracy"]) == [str(d) for d in range(10)]
    assert evaluation["accuracy"] > 0.5  # 2000 images, one epoch: well above chance
    confusion_rows = (root / "plots/confusion.csv").read_text().splitlines()
    assert confusion_rows[0] == "actual,predicted" and len(confusion_rows) == 10001


def test_one_finished_run_with_every_parameter_and_the_commit(finished: Finished) -> None:
    root, only = finished.root, finished.only
    assert only.info.status == "FINISHED"
    assert (
        store(root).get_experiment_by_name(EXPERIMENT).tags["mlflow.experimentKind"]
        == "custom_model_development"
    )
    params = parse_params(read_params(root / "params.yaml"))
    expected = {k: param_value(v) for k, v in flatten(params).items()}
    assert expected["data.limit"] == "2000" and expected["train.mlp_hidden"] == "[512, 256]"
    assert {k: only.data.params.get(k) for k in expected} == expected
    assert (
        only.data.tags["mlflow.source.git.commit"]
        == run(["git", "rev-parse", "HEAD"], root).stdout.strip()
    )
    # A pristine clone's run: DVC rewrote dvc.lock and the outputs on the way, but the code is the
    # commit's.
    assert only.data.tags["git.dirty"] == "false" and "params.changed" not in only.data.tags


def test_train_metrics_name_the_machine(finished: Finished) -> None:
    from pipeline.core import cpu

    machine = json.loads((finished.root / "metrics/train.json").read_text())
    assert (
        machine["cpu"] == cpu.flags() and machine["threads"] >= 1 and machine["portable"] is False
    )


def test_run_holds_the_epochs_the_test_metrics_and_the_system_metrics(finished: Finished) -> None:
    only, evaluation = finished.only, finished.evaluation
    history = store(finished.root).get_metric_history(only.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1]
    metrics = only.data.metrics
    assert metrics["test_accuracy"] == pytest.approx(evaluation["accuracy"])
    assert {"test_loss", "test_macro_f1"} <= set(metrics)
    assert sorted(k for k in metrics if k.startswith("test_class_accuracy/")) == [
        f"test_class_accuracy/{d}" for d in range(10)
    ]
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        metrics
    )


def test_evaluation_artifacts_curves_and_run_files(finished: Finished) -> None:
    root, only = finished.root, finished.only
    artifacts = {a.path for a in store(root).list_artifacts(only.info.run_id)}
    assert {
        "confusion_matrix.png",
        "per_class_accuracy.json",
        "roc_precision_recall.png",
        "roc.csv",
        "precision_recall.csv",
    } <= artifacts
    roc = (root / "plots/roc.csv").read_text().splitlines()
    assert roc[0] == "class,fpr,tpr" and {line.split(",")[0] for line in roc[1:]} == {
        str(d) for d in range(10)
    }
    assert all(roc.count(f"{d},1.0,1.0") == 1 for d in range(10))  # every curve ends in the corner
    assert json.loads((root / "models/mlflow_run.json").read_text())["run_id"] == only.info.run_id
    assert (
        json.loads((root / "metrics/train.json").read_text())["mlflow_run_id"] == only.info.run_id
    )


def test_logged_model_takes_raw_images_and_gives_the_same_accuracy(
    finished: Finished, tmp_path: Path
) -> None:
    from torchvision.datasets import MNIST

    root = finished.root
    test = MNIST(str(root / "data/raw"), train=False)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    # dst_path: MLflow would otherwise download into a temporary folder it never removes.
    model = mlflow.pyfunc.load_model(model_uri(finished.only), dst_path=str(tmp_path))
    images = test.data.numpy()[:, None, :, :]
    logits = np.concatenate(
        [model.predict(images[i : i + 2000]) for i in range(0, len(images), 2000)]
    )
    assert (logits.argmax(1) == test.targets.numpy()).mean() == pytest.approx(
        finished.evaluation["accuracy"], abs=1e-9
    )


def test_run_records_the_hashes_of_dvc_lock_and_the_package_versions(finished: Finished) -> None:
    only = finished.only
    lock = read_yaml((finished.root / "dvc.lock").read_text(), "dvc.lock")["stages"]
    model_md5 = next(o["md5"] for o in lock["train"]["outs"] if o["path"] == "models/model.pt")
    assert only.data.tags["dvc.lock.models/model.pt"] == model_md5
    assert {"dvc.lock.data/raw", "dvc.lock.data/stats.json", "dataset.digest"} <= set(
        only.data.tags
    )
    mlflow.set_tracking_uri(f"sqlite:///{finished.root / 'mlflow.db'}")
    freeze = mlflow.artifacts.load_text(f"runs:/{only.info.run_id}/environment/pip-freeze.txt")
    assert "torch==2.14.1" in freeze and "mlflow==3.17.2" in freeze


def test_rerun_is_a_no_op(finished: Finished) -> None:
    again = run(["dvc", "repro"], finished.root)
    assert "didn't change" in again.stdout or "up to date" in again.stdout.lower()
    assert "Running stage" not in again.stdout
    assert len(runs(finished.root)) == 1


def test_a_code_edit_reruns_the_stages_that_import_it(finished: Finished) -> None:
    # dvc.yaml's deps are the stages' imports. Editing a network or an optimizer reruns what trains,
    # exports and evaluates, never the decoding of the pictures (the parameter check reads the names
    # in core.params only)...
    root = finished.root
    code = {
        name: root / "pipeline" / "core" / name for name in ("models.py", "optim.py", "layers.py")
    }
    for path in code.values():
        path.write_text(path.read_text() + "\n# edited\n")
    status = run(["dvc", "status", "--json"], root).stdout
    # The weights stage builds the network to check a starting file against it.
    assert set(json.loads(status)) == {"weights", "train", "evaluate"}, status
    run(["git", "checkout", "--", *map(str, code.values())], root)
    assert json.loads(run(["dvc", "status", "--json"], root).stdout) == {}
    # ...a change to the atomic writers reruns every stage that writes through them (all five), and
    # nothing else is needed for DVC to notice.
    atomic = root / "pipeline" / "core" / "atomic.py"
    atomic.write_text(atomic.read_text() + "\n# edited\n")
    status = run(["dvc", "status", "--json"], root).stdout
    assert set(json.loads(status)) == {
        "download",
        "normalization-stats",
        "weights",
        "train",
        "evaluate",
    }, status
    # ...and a run of that edited code says so.
    run(["python", "-m", "pipeline", "train"], root)
    assert runs(root)[-1].data.tags["git.dirty"] == "true"
