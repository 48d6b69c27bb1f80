"""The background tracker against a real SQLite store: what it records, and its errors, as
MlflowTracker's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from pipeline.core import figures
from pipeline.core.errors import PipelineError
from pipeline.core.tracking.background import BackgroundTracker
from pipeline.core.tracking.client import MlflowTracker


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, MlflowClient]:
    monkeypatch.chdir(tmp_path)
    (
        tmp_path / ".dvc"
    ).mkdir()  # a project root: the default store's artifacts go beside its database
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(uri)


def test_queued_records_all_land_in_the_run(
    store: tuple[str, MlflowClient], tmp_path: Path
) -> None:
    uri, client = store
    (tmp_path / "notes.txt").write_text("hello")
    tracker = BackgroundTracker(uri, prepare=("matplotlib.pyplot",))
    try:
        with tracker.train_run("exp", "run-a", {"train.lr": 0.01}) as run_id:
            for epoch in range(1, 4):
                tracker.log_metrics({"val_accuracy": epoch / 10}, step=epoch)
            tracker.set_tags({"dataset": "mnist"})
            tracker.log_file(tmp_path / "notes.txt")
            tracker.log_figure(
                "confusion.png", figures.confusion_matrix, [[3, 1], [0, 4]], ["a", "b"]
            )
            tracker.flush()
    finally:
        tracker.close()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run-a"
    assert run.data.params == {"train.lr": "0.01"} and run.data.tags["dataset"] == "mnist"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_accuracy")] == [
        (1, 0.1),
        (2, 0.2),
        (3, 0.3),
    ]
    assert {a.path for a in client.list_artifacts(run_id)} >= {"notes.txt", "confusion.png"}
    assert tracker.process is not None and tracker.process.exitcode == 0


@pytest.mark.parametrize("kind", [MlflowTracker, BackgroundTracker])
def test_runs_shorter_than_a_system_metrics_report_still_have_one(
    store: tuple[str, MlflowClient], monkeypatch: pytest.MonkeyPatch, kind: type
) -> None:
    # MLflow reports after every 1000th sample here, so both runs (train, then evaluate reopening
    # it) end before any report: what they hold is the sample taken as each ends (a default-sized
    # test run on a fast CPU is shorter than the 2 s interval).
    uri, client = store
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1000")
    tracker = kind(uri)
    try:
        with tracker.train_run("exp", "short", {}) as run_id:
            pass
        with tracker.evaluate_run(
            {"run_id": run_id, "experiment_name": "exp", "run_name": "short"}, {}
        ):
            pass
    finally:
        tracker.close()
    history = client.get_metric_history(run_id, "system/system_memory_usage_megabytes")
    assert [m.step for m in history] == [0, 1] and all(m.value > 0 for m in history)
    assert "system/cpu_utilization_percentage" in client.get_run(run_id).data.metrics


def test_a_failed_record_is_raised_as_one_line_and_fails_the_run(
    store: tuple[str, MlflowClient],
) -> None:
    uri, client = store
    tracker = BackgroundTracker(uri)
    try:
        with (
            pytest.raises(PipelineError) as caught,
            tracker.train_run("exp", "run-b", {}) as run_id,
        ):
            tracker.log_metrics({"bad name?!": 1.0})  # MLflow refuses the name, in the child
            # Skipped: the error stops the run as in-process.
            tracker.log_metrics({"never_logged": 1.0})
            tracker.flush()
    finally:
        tracker.close()
    message = str(caught.value)
    assert message.startswith(f"MLflow store {uri}: ") and "\n" not in message
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and "never_logged" not in run.data.metrics


def test_an_interrupt_ends_the_run_killed(store: tuple[str, MlflowClient]) -> None:
    uri, client = store
    tracker = BackgroundTracker(uri)
    try:
        with pytest.raises(KeyboardInterrupt), tracker.train_run("exp", "run-c", {}) as run_id:
            raise KeyboardInterrupt
    finally:
        tracker.close()
    assert client.get_run(run_id).info.status == "KILLED"


def test_a_dead_tracking_process_is_one_line(store: tuple[str, MlflowClient]) -> None:
    uri, _ = store
    tracker = BackgroundTracker(uri)
    assert tracker.process is not None
    tracker.process.kill()
    with (
        pytest.raises(
            PipelineError, match=r"the tracking process ended unexpectedly \(exit code -9\)"
        ),
        tracker.train_run("exp", "run-d", {}),
    ):
        pass
    tracker.close()


# A stage that holds a run open, then waits to be killed; prints the run id and the tracking
# process's pid.
KILLED_STAGE = """
import sys, time
from pipeline.core.tracking.background import BackgroundTracker
tracker = BackgroundTracker(sys.argv[1])
with tracker.train_run("exp", "run-e", {}) as run_id:
    print(run_id, tracker.process.pid, flush=True)
    time.sleep(600)
"""


def test_the_tracking_process_ends_with_a_killed_stage(
    store: tuple[str, MlflowClient], tmp_path: Path
) -> None:
    # SIGKILL leaves the stage no chance to shut its pool down: the tracking process must notice on
    # its own, and leave the run as a kill leaves it (MLflow's exit handler would end it FINISHED).
    uri, client = store
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    stage = subprocess.Popen(
        [sys.executable, "-c", KILLED_STAGE, uri], stdout=subprocess.PIPE, text=True, env=env
    )
    assert stage.stdout is not None
    run_id, pid = stage.stdout.readline().split()
    stage.kill()
    stage.wait()
    worker = psutil.Process(int(pid))
    deadline = time.monotonic() + 300  # a bound on a hang, not a speed check
    while worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the tracking process outlived its stage"
        time.sleep(0.2)
    assert client.get_run(run_id).info.status == "RUNNING"


# A stage whose tracking process is killed with it in the middle of a call that, as MLflow's
# log_model, works in a temporary folder it removes only when it finishes.
KILLED_IN_A_CALL = """
import sys, tempfile, time
from pipeline.core.tracking.background import BackgroundTracker
def draw():
    folder = tempfile.mkdtemp()
    open(folder + "/MLmodel", "w").close()
    time.sleep(600)
tracker = BackgroundTracker(sys.argv[1])
with tracker.train_run("exp", "run-f", {}) as run_id:
    tracker.log_figure("figure.png", draw)
    print(tracker.process.pid, flush=True)
    time.sleep(600)
"""


def killed_in_a_call(
    uri: str, tmp: Path
) -> tuple[subprocess.Popen[str], psutil.Process, dict[str, str]]:
    """KILLED_IN_A_CALL started with TMPDIR `tmp` and waited for until its call is under way: the
    stage, its tracking process and the environment it was given."""
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        "TMPDIR": str(tmp),
    }
    stage = subprocess.Popen(
        [sys.executable, "-c", KILLED_IN_A_CALL, uri], stdout=subprocess.PIPE, text=True, env=env
    )
    assert stage.stdout is not None
    worker = psutil.Process(int(stage.stdout.readline()))
    deadline = time.monotonic() + 300  # bounds on a hang, not speed checks
    while not any(tmp.rglob("MLmodel")):
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.2)
    return stage, worker, env


def test_a_killed_stage_leaves_tmpdir_as_it_found_it(
    store: tuple[str, MlflowClient], tmp_path: Path
) -> None:
    uri, _ = store
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stage, worker, _ = killed_in_a_call(uri, tmp)
    stage.kill()
    stage.wait()
    deadline = time.monotonic() + 300  # bounds on a hang, not speed checks
    while worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the tracking process outlived its stage"
        time.sleep(0.2)
    assert list(tmp.iterdir()) == []


# A stage that opens a run and finishes.
FINISHING = """
import sys
from pipeline.core.tracking.background import BackgroundTracker
tracker = BackgroundTracker(sys.argv[1])
with tracker.train_run("exp", "run-g", {}) as run_id:
    pass
"""


def test_the_next_stage_removes_what_a_stage_killed_with_its_tracking_process_left(
    store: tuple[str, MlflowClient], tmp_path: Path
) -> None:
    uri, _ = store
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stage, worker, env = killed_in_a_call(uri, tmp)
    worker.kill()  # both at once, as a SIGKILL to the process group: nothing of theirs runs
    stage.kill()
    stage.wait()
    psutil.wait_procs([worker], timeout=60)
    (left,) = tmp.iterdir()
    assert left.name.startswith(f"mlflow-tracking-{worker.pid}-")
    subprocess.run([sys.executable, "-c", FINISHING, uri], env=env, check=True, timeout=300)
    assert list(tmp.iterdir()) == []


def test_a_stage_stopped_by_bad_input_creates_no_store(make_project) -> None:
    from helpers import assert_one_line_error, run

    root = make_project()
    run(["python", "-m", "pipeline", "download"], root)
    (root / "data").mkdir(exist_ok=True)
    (root / "data/stats.json").write_text("{}")
    proc = run(["python", "-m", "pipeline", "train"], root, check=False)
    assert_one_line_error(proc, "data/stats.json", "not a statistics file")
    assert not (root / "mlflow.db").exists()
