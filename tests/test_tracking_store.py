"""What reaches the MLflow tracking store, against a finished project, and what is refused before
it: stores that are not there or not MLflow, variables that point MLflow at a run the pipeline did
not open, `-S` values as DVC records them, a diverged or collapsed model, a parameter longer than
MLflow stores, MLflow's Default experiment pinned in DVC's scratch space.

Most are failures DVC and MLflow users have reported publicly, replayed on this pipeline; each
closed as a kind (the given input is one test, the rest of its kind more).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    assert_one_line_error,
    finished_project,
    free_port,
    refused_in_one_line,
    run,
    runs,
    snapshot,
    store,
)

from pipeline.core.tracking.store import FOREIGN_TARGETS
from pipeline.core.yamlio import read_yaml

pytestmark = pytest.mark.e2e


def back_to_head(project: Path) -> None:
    """The workspace as HEAD has it (an experiment leaves its params, lock and outputs behind)."""
    run(["git", "checkout", "--", "."], project)
    run(["dvc", "checkout", "--force"], project)


def strict_json(path: Path) -> object:
    """A JSON file read as strict readers do: NaN and Infinity refused."""

    def refuse(name: str) -> None:
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_project(tmp_path_factory.mktemp("user-reports") / "project")


TRAIN = ["python", "-m", "pipeline.stages.train"]


@pytest.fixture
def not_mlflow() -> Iterator[str]:
    """A web server that answers every request with 200 and plain text: /health passes, the API does
    not."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_port() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_unknown_uri_scheme(project: Path) -> None:
    uri = "nonsense://x"
    refused_in_one_line(
        project,
        TRAIN,
        (f"MLFLOW_TRACKING_URI={uri}", "unknown scheme"),
        env={"MLFLOW_TRACKING_URI": uri},
    )


def test_tracking_server_that_is_not_mlflow(project: Path, not_mlflow: str) -> None:
    refused_in_one_line(
        project,
        TRAIN,
        (f"MLFLOW_TRACKING_URI={not_mlflow}", "not an MLflow tracking server"),
        env={"MLFLOW_TRACKING_URI": not_mlflow},
    )


def test_tracking_server_that_never_answers(project: Path, silent_port: str) -> None:
    refused_in_one_line(
        project,
        TRAIN,
        (f"MLFLOW_TRACKING_URI={silent_port}", "unreachable"),
        env={"MLFLOW_TRACKING_URI": silent_port},
    )


def test_tracking_server_that_is_down(project: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    refused_in_one_line(
        project,
        ["python", "-m", "pipeline.stages.evaluate"],
        (f"MLFLOW_TRACKING_URI={dead}", "unreachable"),
        env={"MLFLOW_TRACKING_URI": dead},
    )


def test_set_values_are_those_dvc_records_in_the_run_and_in_mlflow(project: Path) -> None:
    # Accepted: the same value in `dvc params diff`, in the train stage's run and in MLflow.
    sets = {"mlflow.experiment_name": "off", "mlflow.model_alias": "yes", "train.lr": "1e-3"}
    run(
        [
            "dvc",
            "exp",
            "run",
            "-n",
            "yaml-traps",
            *[a for k, v in sets.items() for a in ("-S", f"{k}={v}")],
        ],
        project,
    )
    diff = json.loads(run(["dvc", "params", "diff", "--json"], project).stdout)["params.yaml"]
    recorded = {key: diff[key]["new"] for key in sets}
    assert recorded == {
        "mlflow.experiment_name": "off",
        "mlflow.model_alias": "yes",
        "train.lr": 0.001,
    }
    run_id = json.loads((project / "metrics/train.json").read_text())["mlflow_run_id"]
    logged = store(project).get_run(run_id)
    assert store(project).get_experiment(logged.info.experiment_id).name == "off"
    assert {key: logged.data.params[key] for key in sets} == {
        k: str(v) for k, v in recorded.items()
    }
    back_to_head(project)

    # Refused: the value DVC recorded, named with its key; YAML 1.1 would have trained with seed
    # 242.
    before = snapshot(project)
    for key, value, shown in (("seed", "4:2", "'4:2'"), ("data.augment", "on", "'on'")):
        proc = run(["dvc", "exp", "run", "-S", f"{key}={value}"], project, check=False)
        errors = [
            line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")
        ]
        assert (
            proc.returncode != 0 and len(errors) == 1 and key in errors[0] and shown in errors[0]
        ), proc.stderr
        run(["git", "checkout", "--", "params.yaml"], project)
    assert snapshot(project) == before


@pytest.mark.parametrize("variable", list(FOREIGN_TARGETS))
def test_variables_that_point_mlflow_elsewhere_are_refused(project: Path, variable: str) -> None:
    client = store(project)
    (victim, *_) = runs(project)
    before_runs = {
        r.info.run_id: (r.info.status, r.info.run_name, dict(r.data.metrics)) for r in runs(project)
    }
    before = snapshot(project)
    value = victim.info.run_id if "RUN" in variable else ("0" if "ID" in variable else "elsewhere")
    for stage in ("train", "evaluate"):
        proc = run(
            ["python", "-m", f"pipeline.stages.{stage}"], project, check=False, **{variable: value}
        )
        assert_one_line_error(proc, variable)
    assert snapshot(project) == before
    assert {
        r.info.run_id: (r.info.status, r.info.run_name, dict(r.data.metrics)) for r in runs(project)
    } == before_runs
    assert client.get_run(victim.info.run_id).info.status == "FINISHED"


def test_a_diverged_model_is_evaluated_and_called_chance_level(project: Path) -> None:
    # The reported input: validation loss in the thousands, every number finite.
    proc = run(
        [
            "dvc",
            "exp",
            "run",
            "-n",
            "diverged",
            "-S",
            "train.lr=1000",
            "-S",
            "train.scheduler=none",
            "-S",
            "data.limit=2000",
            "-S",
            "train.epochs=2",
        ],
        project,
    )
    assert "warning: the model is at chance level" in proc.stdout + proc.stderr
    train, evaluation = (
        strict_json(project / "metrics/train.json"),
        strict_json(project / "metrics/eval.json"),
    )
    assert evaluation["accuracy"] < 0.2 and evaluation["loss"] > 10
    logged = store(project).get_run(train["mlflow_run_id"])
    assert logged.info.status == "FINISHED" and logged.data.tags["model.at_chance_level"] == "true"
    assert "test_accuracy" in logged.data.metrics and "test_roc_auc" in logged.data.metrics
    back_to_head(project)


def test_a_nan_loss_stops_the_stage_in_one_line_and_keeps_every_output(project: Path) -> None:
    before = snapshot(project)
    known = {r.info.run_id for r in runs(project)}
    proc = run(
        [
            "dvc",
            "exp",
            "run",
            "-S",
            "train.optimizer=sgd",
            "-S",
            "train.lr=1e30",
            "-S",
            "train.scheduler=none",
        ],
        project,
        check=False,
    )
    errors = [
        line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")
    ]
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    assert (
        len(errors) == 1 and "epoch 1, step" in errors[0] and "learning rate 1e+30" in errors[0]
    ), errors
    (new,) = [r for r in runs(project) if r.info.run_id not in known]
    assert new.info.status == "FAILED"
    run(["git", "checkout", "--", "params.yaml"], project)
    assert snapshot(project) == before


def test_a_parameter_longer_than_mlflow_keeps_is_stored_whole_and_reproduced(
    project: Path, tmp_path: Path
) -> None:
    # train.mlp_hidden with 2,100 entries: 6,300 characters as MLflow shows it, which keeps 6,000.
    # (The network is the default cnn, which does not read it: the value, not a 2,100-layer net, is
    # the point.)
    hidden = json.dumps([1] * 2100, separators=(",", ":"))
    run(["dvc", "exp", "run", "-n", "long", "-S", f"train.mlp_hidden={hidden}"], project)
    run_id = json.loads((project / "metrics/train.json").read_text())["mlflow_run_id"]
    logged = store(project).get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert (
        "…[cut] (6,300 characters" in logged.data.params["train.mlp_hidden"]
    )  # "[1, 1, …]": 6,300 characters
    whole = read_yaml(
        Path(store(project).download_artifacts(run_id, "params.yaml", str(tmp_path))).read_text()
    )
    assert whole["train"]["mlp_hidden"] == [1] * 2100

    # reproduce rebuilds it from the artifact in a clean clone of its commit, compares every test
    # metric, and leaves no clone behind (the one test of `reproduce` end to end).
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "long"], project)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = run(
        ["python", "-m", "pipeline", "reproduce", "--run-id", run_id], project, TMPDIR=str(scratch)
    )
    assert re.search(rf"reproduced: all \d+ test metrics of run {run_id} match", proc.stdout)
    assert not list(scratch.glob("reproduce-*"))  # (torch keeps a cache there)


def test_mlflow_default_experiment_stays_with_the_project(make_project) -> None:
    # A fresh clone whose first run is a --temp experiment logging into MLflow's Default experiment,
    # which MLflow creates then, from DVC's temporary copy: its artifacts must land in the project,
    # not the copy.
    root = make_project()
    run(["dvc", "exp", "run", "--temp", "-S", "mlflow.experiment_name=Default"], root)
    default = store(root).get_experiment("0")
    assert Path(default.artifact_location.removeprefix("file://")) == root / "mlruns" / "0"
    shutil.rmtree(root / ".dvc/tmp/exps", ignore_errors=True)  # as DVC does after the experiment
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    (logged,) = mlflow.search_logged_models(experiment_ids=["0"], output_format="list")
    assert mlflow.pyfunc.load_model(f"models:/{logged.model_id}") is not None

    # An experiment whose artifacts already sit inside DVC's scratch space is refused before
    # training.
    scratch = root / ".dvc/tmp/exps/run/abc/mlruns/7"
    store(root).create_experiment("scratch", artifact_location=scratch.as_uri())
    # The workspace's own data and starting weights (the first run was --temp).
    run(["dvc", "repro", "normalization-stats"], root)
    run(["dvc", "repro", "weights"], root)
    before = snapshot(root)
    proc = run(["dvc", "exp", "run", "-S", "mlflow.experiment_name=scratch"], root, check=False)
    errors = [
        line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")
    ]
    assert (
        len(errors) == 1
        and "mlflow.experiment_name" in errors[0]
        and "DVC's temporary folder" in errors[0]
    )
    run(["git", "checkout", "--", "params.yaml"], root)
    assert snapshot(root) == before
    assert not any(r.info.status == "RUNNING" for r in store(root).search_runs(["0", "1", "2"]))
    assert os.path.isdir(root / "mlruns")
