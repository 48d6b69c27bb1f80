"""The whole pipeline through a real `dvc` in a temporary git repository, checked in the real MLflow
store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from helpers import EXPERIMENT, model_uri, run, runs, store

from pipeline.core.params import flatten, parse_params
from pipeline.core.tracking.provenance import param_value

pytestmark = pytest.mark.e2e


def test_repro_logs_one_complete_run_and_rerun_is_a_no_op(make_project, tmp_path: Path) -> None:
    root = make_project()
    run(["dvc", "repro"], root)

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
    evaluation = json.loads((root / "metrics/eval.json").read_text())
    assert set(evaluation) >= {"accuracy", "loss", "macro_f1", "per_class_accuracy"}
    assert list(evaluation["per_class_accuracy"]) == [str(d) for d in range(10)]
    assert evaluation["accuracy"] > 0.5  # 2000 images, one epoch: well above chance
    confusion_rows = (root / "plots/confusion.csv").read_text().splitlines()
    assert confusion_rows[0] == "actual,predicted" and len(confusion_rows) == 10001

    (only,) = runs(root)
    assert only.info.status == "FINISHED"
    assert (
        store(root).get_experiment_by_name(EXPERIMENT).tags["mlflow.experimentKind"]
        == "custom_model_development"
    )
    params = parse_params(yaml.safe_load((root / "params.yaml").read_text()))
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
    machine = json.loads((root / "metrics/train.json").read_text())
    from pipeline.core import cpu

    assert (
        machine["cpu"] == cpu.flags() and machine["threads"] >= 1 and machine["portable"] is False
    )
    client = store(root)
    history = client.get_metric_history(only.info.run_id, "val_accuracy")
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
    artifacts = {a.path for a in client.list_artifacts(only.info.run_id)}
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

    # The logged model is self-contained: raw uint8 test images in, the same accuracy out.
    from torchvision.datasets import MNIST

    test = MNIST(str(root / "data/raw"), train=False)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    # dst_path: MLflow would otherwise download into a temporary folder it never removes.
    model = mlflow.pyfunc.load_model(model_uri(only), dst_path=str(tmp_path))
    images = test.data.numpy()[:, None, :, :]
    logits = np.concatenate(
        [model.predict(images[i : i + 2000]) for i in range(0, len(images), 2000)]
    )
    assert (logits.argmax(1) == test.targets.numpy()).mean() == pytest.approx(
        evaluation["accuracy"], abs=1e-9
    )

    # Provenance: the data, statistics and model hashes from dvc.lock, and the package versions.
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    model_md5 = next(o["md5"] for o in lock["train"]["outs"] if o["path"] == "models/model.pt")
    assert only.data.tags["dvc.lock.models/model.pt"] == model_md5
    assert {"dvc.lock.data/raw", "dvc.lock.data/stats.json", "dataset.digest"} <= set(
        only.data.tags
    )
    freeze = mlflow.artifacts.load_text(f"runs:/{only.info.run_id}/environment/pip-freeze.txt")
    assert "torch==2.14.1" in freeze and "mlflow==3.17.2" in freeze

    again = run(["dvc", "repro"], root)
    assert "didn't change" in again.stdout or "up to date" in again.stdout.lower()
    assert "Running stage" not in again.stdout
    assert len(runs(root)) == 1

    # dvc.yaml's deps are the stages' imports. Editing a network or an optimizer reruns what trains,
    # exports and evaluates, never the decoding of the pictures (the parameter check reads
    # the names in core.params only)...
    code = {
        name: root / "pipeline" / "core" / name for name in ("models.py", "optim.py", "layers.py")
    }
    for path in code.values():
        path.write_text(path.read_text() + "\n# edited\n")
    status = run(["dvc", "status", "--json"], root).stdout
    assert set(json.loads(status)) == {"train", "export", "evaluate"}, status
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
        "train",
        "export",
        "evaluate",
    }, status
    # ...and a run of that edited code says so.
    run(["python", "-m", "pipeline", "train"], root)
    assert runs(root)[-1].data.tags["git.dirty"] == "true"


def test_exp_run_on_a_dataset_with_no_files_and_no_network_fails_in_one_line(make_project) -> None:
    root = make_project()
    # A dead proxy makes any download fail at once, wherever the suite runs.
    proc = run(
        ["dvc", "exp", "run", "-S", "data.dataset=kmnist"],
        root,
        check=False,
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    for name in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "data.mirror",
    ]:
        assert name in errors[0]
    assert not (root / "data" / "raw").exists()
