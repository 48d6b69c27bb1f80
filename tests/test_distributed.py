"""train.processes > 1: the train stage launches itself under torchrun's launcher; one MLflow run,
rank 0's outputs, deterministic weights, resumable, the same accuracy as one process, one-line
errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    assert_one_line_error,
    create_project,
    model_uri,
    read_params,
    run,
    runs,
    sha256,
    stop_train_after_epoch,
    write_params,
)

from pipeline.core import distributed
from pipeline.core.errors import PipelineError
from pipeline.core.params import TrainParams, merge, parse_params
from pipeline.core.repo import clean_env

# Big enough to converge to ~97 % in two short epochs, so one and two processes can be compared on
# test accuracy; small enough for seconds of training. patience: null keeps both epochs (the resume
# needs two). One thread per process: on a busy machine a 2-thread process waits on OpenMP barriers
# for whole seconds.
PARAMS = {
    "data": {"limit": 10000, "val_size": 1000},
    "train": {"epochs": 2, "batch_size": 128, "patience": None, "processes": 2, "threads": 1},
}


def set_params(root: Path, changes: dict) -> None:
    path = root / "params.yaml"
    write_params(path, merge(read_params(path), changes))


# ---------------------------------------------------------------------------------------------- no
# processes


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_processes_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(PipelineError, match=r"^p: train\.processes must be an integer >= 1, got"):
        parse_params({"train": {"processes": value}}, source="p")


def test_every_process_needs_part_of_every_batch() -> None:
    with pytest.raises(PipelineError, match=r"train\.batch_size must be >= train\.processes"):
        parse_params({"train": {"processes": 4, "batch_size": 3}}, source="p")


def test_one_process_imports_no_launcher_and_no_torch_before_training() -> None:
    # The train stage asks `distributed.wanted` before torch loads; with one process nothing else of
    # it runs.
    code = (
        "import sys, pipeline.stages.train; from pipeline.core import distributed, params; "
        "assert not distributed.wanted(params.TrainParams()); "
        "assert not [m for m in sys.modules if m.startswith('torch')], 'torch imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, env=clean_env(), cwd=Path(__file__).parents[1]
    )


def test_parts_of_a_batch_cover_it_in_order_and_differ_by_at_most_one() -> None:
    import torch

    batch = torch.arange(7)
    parts = [distributed.World(rank, 3, rank, 3).part(batch) for rank in range(3)]
    assert [len(p) for p in parts] == [3, 2, 2]
    assert torch.equal(torch.cat(parts), batch)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PIPELINE_NNODES": "two"}, "PIPELINE_NNODES must be an integer >= 1"),
        (
            {"PIPELINE_NNODES": "2", "PIPELINE_NODE_RANK": "2", "PIPELINE_MASTER": "h:1"},
            "PIPELINE_NODE_RANK must be < PIPELINE_NNODES",
        ),
        ({"PIPELINE_NNODES": "2"}, "PIPELINE_MASTER must be HOST:PORT"),
    ],
)
def test_bad_node_variables_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, env: dict, needle: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(PipelineError, match=needle):
        distributed.wanted(TrainParams())


# ----------------------------------------------------------------------------------------------
# real runs


@dataclass(frozen=True)
class Runs:
    root: Path
    two: str  # sha256 of models/model.pt after `dvc repro` with 2 processes
    two_accuracy: float
    two_stdout: str
    two_run_file: dict
    mlflow_runs: list  # the store right after that run
    resumed: str  # sha256 after a 2-process run was stopped after epoch 1 and run again
    resumed_stdout: str
    one: str  # sha256 with train.processes: 1
    one_accuracy: float
    one_train_json: dict


def accuracy(root: Path) -> float:
    return json.loads((root / "metrics/eval.json").read_text())["accuracy"]


@pytest.fixture(scope="module")
def project_runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = create_project(tmp_path_factory.mktemp("distributed") / "project", PARAMS)
    repro = run(["dvc", "repro"], root)
    two, two_accuracy, mlflow_runs = sha256(root / "models/model.pt"), accuracy(root), runs(root)
    run_file = json.loads((root / "models/mlflow_run.json").read_text())

    # The same run stopped (SIGTERM to the stage, as `dvc queue kill` or Ctrl-C would) after epoch
    # 1, then again.
    returncode, seen = stop_train_after_epoch(root, "epoch 1/2", signal.SIGTERM)
    assert returncode == 130, seen
    assert (root / "checkpoints/train.pt").is_file(), seen
    resumed = run(["python", "-m", "pipeline", "train"], root)
    resumed_hash = sha256(root / "models/model.pt")

    set_params(root, {"train": {"processes": 1}})
    run(["python", "-m", "pipeline", "train"], root)
    run(["python", "-m", "pipeline", "evaluate"], root)
    return Runs(
        root,
        two,
        two_accuracy,
        repro.stdout,
        run_file,
        mlflow_runs,
        resumed_hash,
        resumed.stdout,
        sha256(root / "models/model.pt"),
        accuracy(root),
        json.loads((root / "metrics/train.json").read_text()),
    )


@pytest.mark.e2e
def test_two_processes_log_exactly_one_finished_run_with_its_params_once(
    project_runs: Runs,
) -> None:
    (only,) = project_runs.mlflow_runs
    assert only.info.status == "FINISHED"
    assert only.data.params["train.processes"] == "2" and only.data.tags["world_size"] == "2"
    assert only.data.metrics["test_accuracy"] == pytest.approx(project_runs.two_accuracy)
    # Rank 0 alone prints: one header, one line per epoch, one summary.
    out = project_runs.two_stdout
    assert out.count("train: cnn on mnist") == 1 and "in each of 2 processes" in out
    assert out.count("epoch 1/2:") == 1 and out.count("best val_accuracy") == 1
    assert project_runs.two_run_file["run_id"] == only.info.run_id
    assert project_runs.two_run_file["model_uri"] == model_uri(only)  # rank 0 logged the one model


@pytest.mark.e2e
def test_a_stopped_two_process_run_resumes_to_the_same_bytes(project_runs: Runs) -> None:
    # Byte-identical to the uninterrupted 2-process run: the two processes are deterministic, and
    # every rank continues from rank 0's checkpoint.
    assert "resuming from the checkpoint after epoch 1" in project_runs.resumed_stdout
    assert "epoch 1/2" not in project_runs.resumed_stdout
    assert project_runs.resumed == project_runs.two


@pytest.mark.e2e
def test_two_processes_reach_the_accuracy_of_one(project_runs: Runs) -> None:
    assert (
        project_runs.one != project_runs.two
    )  # other reductions and dropout streams: another (as good) model
    assert project_runs.one_accuracy > 0.9
    assert abs(project_runs.two_accuracy - project_runs.one_accuracy) <= 0.01
    assert "world_size" not in project_runs.one_train_json  # one process: train.json as before


@pytest.mark.e2e
def test_a_worker_error_is_one_line_and_no_hang(tmp_path: Path) -> None:
    root = create_project(tmp_path / "project", {"train": {"processes": 2}})
    run(["python", "-m", "pipeline", "download"], root)
    (root / "data").mkdir(exist_ok=True)
    (root / "data/stats.json").write_text('{"mean": [0.1], "std": [0.0]}')  # found by every worker
    proc = run(
        ["python", "-m", "pipeline", "train"], root, check=False
    )  # returns only once the workers are gone
    assert_one_line_error(proc, "data/stats.json")
    assert not (root / "models/model.pt").exists()
