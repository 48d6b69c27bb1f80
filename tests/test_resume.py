"""A train process killed after an epoch resumes from its checkpoint and ends byte-identical."""

from __future__ import annotations

import signal

import pytest
from helpers import run, sha256, stop_train_after_epoch
from mlflow.tracking import MlflowClient

from pipeline.core.params import merge

pytestmark = pytest.mark.e2e

PARAMS = {
    "data": {"limit": 3000, "val_size": 500},
    "train": {"epochs": 3, "batch_size": 64, "patience": None, "precision": "fp32"},
}


# Fine-tuning: epoch 1 trains the head alone (batch-norm statistics kept), epoch 2 on everything,
# the averaged weights checkpointed: the freeze follows from the epoch number after a resume.
FINE_TUNING = {"train": {"freeze_epochs": 1, "ema_decay": 0.9, "batch_norm": True}}


@pytest.mark.parametrize("extra", [{}, FINE_TUNING], ids=["plain", "fine-tuning"])
def test_killed_train_resumes_to_identical_weights(make_project, extra: dict) -> None:
    root = make_project(merge(PARAMS, extra))
    run(["python", "-m", "pipeline", "download"], root)
    run(["python", "-m", "pipeline", "normalization-stats"], root)

    run(["python", "-m", "pipeline", "train"], root)
    uninterrupted = sha256(root / "models/model.pt")
    assert not (root / "checkpoints/train.pt").exists()  # removed after a finished run

    returncode, seen = stop_train_after_epoch(root, "epoch 1/3", signal.SIGKILL)
    assert returncode == -signal.SIGKILL, seen
    assert (root / "checkpoints/train.pt").is_file()

    resumed = run(["python", "-m", "pipeline", "train"], root).stdout
    assert "resuming from the checkpoint after epoch" in resumed
    assert "epoch 1/3" not in resumed
    assert sha256(root / "models/model.pt") == uninterrupted

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("image-classification")
    _first, second = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert second.info.status == "FINISHED"  # the killed run was resumed, not left RUNNING
    steps = sorted({m.step for m in client.get_metric_history(second.info.run_id, "val_accuracy")})
    assert steps == [1, 2, 3]
