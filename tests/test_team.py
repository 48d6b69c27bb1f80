"""The team set-up for real: `python -m pipeline stack` (PostgreSQL, rclone's S3, an authenticated
MLflow server), the unchanged pipeline logging to it, and the shared DVC remote between two clones.

One stack and one pair of clones for the module; the tests build on each other in file order (a run,
then a restart that must keep it, then a clone that pulls it, then an experiment shared both ways).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from helpers import (
    DEFAULT_LR,
    EXPERIMENT,
    OTHER_LR,
    assert_one_line_error,
    create_project,
    run,
    sha256,
)

from pipeline_team import stack
from pipeline_team.stack.processes import Record

pytestmark = pytest.mark.e2e

EXP_NAME = "team-exp"
REGISTERED = "team-classifier"


def api(stack, path: str, auth: tuple[str, str] | bool | None = True) -> tuple[int, dict]:
    """GET on the stack's MLflow REST API (basic auth with the stack's admin unless told
    otherwise)."""
    request = urllib.request.Request(f"{stack.env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/{path}")
    if auth is True:
        auth = (stack.env["MLFLOW_TRACKING_USERNAME"], stack.env["MLFLOW_TRACKING_PASSWORD"])
    if auth:
        request.add_header(
            "Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def s3_keys(stack, bucket: str) -> list[str]:
    """Every object key in a bucket of the stack's S3 store."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=stack.config.s3_key,
        aws_secret_access_key=stack.config.s3_secret,
    )
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


@pytest.fixture(scope="module")
def clones(tmp_path_factory, team_stack) -> SimpleNamespace:
    """A bare git remote, clone `a` (the project) pushed to it, and the folder for clone `b`."""
    base = tmp_path_factory.mktemp("team")
    origin = base / "origin.git"
    run(
        ["git", "init", "-q", "--bare", "-b", "main", str(origin)], base
    )  # HEAD names the branch pushed
    a = create_project(base / "a")
    run(["git", "remote", "add", "origin", str(origin)], a)
    run(["git", "push", "-q", "origin", "main"], a)
    return SimpleNamespace(base=base, origin=origin, a=a, b=base / "b", run_id=None)


def test_requests_without_the_credentials_are_refused(team_stack) -> None:
    assert api(team_stack, "experiments/search?max_results=1", auth=None)[0] == 401
    assert (
        api(team_stack, "experiments/search?max_results=1", auth=("admin", "wrong-password-123"))[0]
        == 401
    )
    assert api(team_stack, "experiments/search?max_results=1")[0] == 200
    assert team_stack.env["PIPELINE_SWEEP_STORAGE"] == team_stack.optuna_storage
    assert team_stack.optuna_storage.startswith(
        "postgresql+psycopg2://"
    ) and team_stack.optuna_storage.endswith("/optuna")
    # Credentials are saved for the owner only: every file of the stack that holds one.
    from test_stack_secrets import secret_holders

    holders = secret_holders(team_stack, team_stack.dir.rglob("*"))
    assert {"stack.json", "basic_auth.ini"} <= {path.name for path in holders}
    for path in [*holders, team_stack.dir / "pids.json"]:
        assert path.stat().st_mode & 0o077 == 0, path


def test_the_pipeline_logs_to_the_stack_and_its_artifacts_land_in_s3(team_stack, clones) -> None:
    a = clones.a
    run(["dvc", "repro"], a, **team_stack.env)
    run_id = json.loads((a / "metrics/train.json").read_text())["mlflow_run_id"]
    clones.run_id = run_id

    status, body = api(team_stack, f"runs/get?run_id={run_id}")
    assert status == 200
    params = {p["key"]: p["value"] for p in body["run"]["data"]["params"]}
    metrics = {m["key"]: m["value"] for m in body["run"]["data"]["metrics"]}
    assert params["train.lr"] == DEFAULT_LR and params["evaluate.top_k"] == "3"
    assert 0 < metrics["test_accuracy"] <= 1 and "val_accuracy" in metrics

    # Artifacts and the model went through the server's proxy into the S3 bucket, not into the
    # project.
    keys = s3_keys(team_stack, "mlflow")
    assert any(run_id in k and k.endswith("confusion_matrix.png") for k in keys), keys
    assert any("/models/" in k and k.endswith("/MLmodel") for k in keys), keys
    assert not (a / "mlruns").exists() and not (a / "mlflow.db").exists()

    # Results to git, data + statistics + model to the shared DVC remote, which this clone names
    # only now.
    proc = run(["dvc", "push"], a, check=False)
    assert (
        proc.returncode != 0 and "Traceback" not in proc.stderr and "remote" in proc.stderr.lower()
    )
    run(["python", "-m", "pipeline", "stack", "remote", "--dir", str(team_stack.dir)], a)
    run(["git", "add", "-A"], a)
    run(["git", "commit", "-q", "-m", "results"], a)
    run(["git", "push", "-q", "origin", "main"], a)
    run(["dvc", "push", "--run-cache"], a, **team_stack.env)
    assert any(k.startswith("pipeline/") for k in s3_keys(team_stack, "dvc"))


def test_a_restart_from_the_cli_keeps_the_runs(team_stack, clones) -> None:
    assert clones.run_id, "needs the run of the previous test"
    stack_dir, a = str(team_stack.dir), clones.a
    old = json.loads((team_stack.dir / "pids.json").read_text())
    proc = run(["python", "-m", "pipeline", "stack", "stop", "--dir", stack_dir], a)
    assert "mlflow: stopped" in proc.stdout and "postgres: stopped" in proc.stdout
    # Nothing of the stack runs any more: PostgreSQL and rclone are started from nothing below.
    for name, record in old.items():
        assert not Record(**record).members(), name
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", team_stack.config.ports[name])) != 0, name
    assert (
        run(
            ["python", "-m", "pipeline", "stack", "status", "--dir", stack_dir], a, check=False
        ).returncode
        == 1
    )

    proc = run(["python", "-m", "pipeline", "stack", "start", "--dir", stack_dir], a)
    exports = dict(line.removeprefix("export ").split("=", 1) for line in proc.stdout.splitlines())
    assert (
        exports["MLFLOW_TRACKING_URI"] == team_stack.env["MLFLOW_TRACKING_URI"]
    )  # same ports, same credentials
    assert set(exports) == set(team_stack.env)
    new = json.loads((team_stack.dir / "pids.json").read_text())
    assert all(new[name]["pid"] != old[name]["pid"] for name in old)

    status, body = api(team_stack, f"runs/get?run_id={clones.run_id}")
    assert status == 200 and body["run"]["info"]["status"] == "FINISHED"
    status, listing = api(team_stack, f"artifacts/list?run_id={clones.run_id}")
    assert status == 200 and any(f["path"] == "confusion_matrix.png" for f in listing["files"])

    # A second start while it runs is one line, exit 2.
    proc = run(["python", "-m", "pipeline", "stack", "start", "--dir", stack_dir], a, check=False)
    assert_one_line_error(proc, "still has processes running")


def test_a_fresh_clone_pulls_everything_and_reproduces_nothing(team_stack, clones) -> None:
    b = clones.b
    run(["git", "clone", "-q", str(clones.origin), str(b)], clones.base)
    run(["git", "config", "user.email", "tests@example.invalid"], b)
    run(["git", "config", "user.name", "tests"], b)
    run(["python", "-m", "pipeline", "stack", "remote", "--dir", str(team_stack.dir)], b)
    run(["dvc", "pull"], b, **team_stack.env)
    for rel in ("data/raw", "data/stats.json", "models/model.pt"):
        assert (b / rel).exists(), rel
    assert sha256(b / "models/model.pt") == sha256(clones.a / "models/model.pt")
    assert "up to date" in run(["dvc", "status"], b, **team_stack.env).stdout
    proc = run(["dvc", "repro"], b, **team_stack.env)
    assert "Running stage" not in proc.stdout, proc.stdout
    run(["python", "-m", "pipeline", "baseline"], b)


def test_experiments_are_shared_between_clones(team_stack, clones) -> None:
    a, b = clones.a, clones.b
    assert (b / ".git").exists(), "needs the clone of the previous test"
    run(
        [
            "dvc",
            "exp",
            "run",
            "-n",
            EXP_NAME,
            "-S",
            f"train.lr={OTHER_LR}",
            "-S",
            f"mlflow.register_model={REGISTERED}",
        ],
        a,
        **team_stack.env,
    )
    run_id = json.loads((a / "metrics/train.json").read_text())["mlflow_run_id"]
    status, body = api(team_stack, f"runs/get?run_id={run_id}")
    assert status == 200
    assert {p["key"]: p["value"] for p in body["run"]["data"]["params"]}["train.lr"] == OTHER_LR
    assert {t["key"]: t["value"] for t in body["run"]["data"]["tags"]}["dvc.exp_name"] == EXP_NAME
    status, body = api(team_stack, f"registered-models/alias?name={REGISTERED}&alias=candidate")
    assert status == 200 and body["model_version"]["run_id"] == run_id

    proc = run(["python", "-m", "pipeline", "compare", "--last", "2"], a, **team_stack.env)
    assert run_id in proc.stdout and clones.run_id in proc.stdout

    run(["dvc", "exp", "push", "origin", EXP_NAME], a, **team_stack.env)
    run(["dvc", "exp", "pull", "origin", EXP_NAME], b, **team_stack.env)
    assert EXP_NAME in run(["dvc", "exp", "list", "--name-only"], b).stdout
    run(["dvc", "exp", "apply", EXP_NAME], b, **team_stack.env)
    assert sha256(b / "models/model.pt") == sha256(
        a / "models/model.pt"
    )  # the experiment's model, from S3
    assert "train.lr" in run(["dvc", "params", "diff"], b).stdout
    assert not (a / "mlruns").exists() and not (b / "mlruns").exists()

    _, experiments = api(team_stack, f"experiments/get-by-name?experiment_name={EXPERIMENT}")
    assert experiments["experiment"]["artifact_location"].startswith("mlflow-artifacts:")


def test_a_killed_server_is_reported_and_stopped_whole(team_stack, clones) -> None:
    # kill -9 of the MLflow server's pid: its worker goes on serving the port.
    stack_dir = str(team_stack.dir)
    record = stack.read_records(team_stack)["mlflow"]
    workers = [p.pid for p in record.members() if p.pid != record.pid]
    assert workers, "mlflow server runs a worker process"
    os.kill(record.pid, signal.SIGKILL)
    proc = run(
        ["python", "-m", "pipeline", "stack", "status", "--dir", stack_dir], clones.a, check=False
    )
    line = next(line for line in proc.stdout.splitlines() if line.startswith("mlflow"))
    assert proc.returncode == 1 and "broken" in line and str(workers[0]) in line, proc.stdout
    assert_one_line_error(
        run(
            ["python", "-m", "pipeline", "stack", "start", "--dir", stack_dir],
            clones.a,
            check=False,
        ),
        "still has processes running",
        "stack stop",
    )
    proc = run(["python", "-m", "pipeline", "stack", "stop", "--dir", stack_dir], clones.a)
    assert f"mlflow: stopped (pids {workers[0]}" in proc.stdout or str(workers[0]) in proc.stdout
    for name in ("mlflow", "s3", "postgres"):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", team_stack.config.ports[name])) != 0, name
    run(
        ["python", "-m", "pipeline", "stack", "start", "--dir", stack_dir], clones.a
    )  # everything survived


def test_a_dead_storage_behind_the_server_surfaces_in_seconds(team_stack, clones) -> None:
    # The S3 store dies behind a running MLflow server: the next upload fails, and the stage says
    # so.
    import time

    stack.read_records(team_stack)["s3"].stop()
    start = time.monotonic()
    proc = run(
        ["dvc", "exp", "run", "-S", "train.lr=0.02"], clones.a, check=False, **team_stack.env
    )
    seconds = time.monotonic() - start
    errors = [
        line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")
    ]
    assert proc.returncode != 0 and len(errors) == 1 and "MLflow store" in errors[0], (
        proc.stdout + proc.stderr
    )
    assert seconds < 150, (
        f"the stage took {seconds:.0f} s to report a dead artifact store"
    )  # it hung 305 s
    run(["git", "checkout", "--", "."], clones.a)
    run(["python", "-m", "pipeline", "stack", "stop", "--dir", str(team_stack.dir)], clones.a)
    run(["python", "-m", "pipeline", "stack", "start", "--dir", str(team_stack.dir)], clones.a)
