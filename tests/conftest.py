"""Fixtures: a throwaway project per test, and real `mlflow server` processes stopped by their
pid."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import create_project, free_port

from pipeline.core.repo import clean_env

# The files that take minutes, longest first (summed `--durations` of a full run on 2 cores):
# longest-processing- time-first keeps both workers busy to the end. Only the order of the run
# depends on it, never a result: a file missing here just runs after these.
SLOW_FILES = (
    "test_user_reports.py",
    "test_team.py",
    "test_experiments.py",
    "test_catalogue_inputs.py",
    "test_sweep.py",
    "test_catalogue_params.py",
    "test_distributed.py",
    "test_faults.py",
    "test_reproducibility.py",
    "test_datasets.py",
    "test_bench.py",
    "test_own_images.py",
    "test_preset.py",
    "test_background.py",
    "test_tracking_server.py",
    "test_pipeline_e2e.py",
    "test_zoo_e2e.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow files first, so that `pytest -n 2 --dist loadfile`, which hands out whole files in this
    order, does not end with one worker on a minutes-long file while the other sits idle."""
    gone = [name for name in SLOW_FILES if not (Path(__file__).parent / name).is_file()]
    if gone:  # a renamed file would silently lose its place
        raise pytest.UsageError(
            f"tests/conftest.py SLOW_FILES names files that do not exist: {', '.join(gone)}"
        )
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    """Factory: create_project in this test's temporary folder."""
    return lambda params=None, name="project": create_project(tmp_path / name, params)


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """Factory: start a real `mlflow server` on a loopback port (a free one unless given); returns
    its URL. `mlflow_server.stop(url)` stops one early; all are stopped by their pid after the
    test."""
    import time
    import urllib.request

    procs: dict[str, subprocess.Popen] = {}

    def start(
        backend: str | None = None, artifacts: Path | None = None, port: int | None = None
    ) -> str:
        port = port or free_port()
        cmd = [
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            backend or f"sqlite:///{tmp_path / f'server-{port}.db'}",
        ]
        if artifacts is not None:
            cmd += ["--artifacts-destination", str(artifacts)]
        # The server outlives this block; the file closes with the process at teardown.
        log = open(tmp_path / f"mlflow-server-{port}.log", "w")  # noqa: SIM115
        url = f"http://127.0.0.1:{port}"
        # No job consumers: two processes in ~0.5 GB instead of nine in ~2.4 GB.
        env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        procs[url] = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        # Loopback never goes through a proxy, whatever an earlier test left in urllib's global
        # opener.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with opener.open(f"{url}/health", timeout=2):
                    return url
            except OSError:
                if procs[url].poll() is not None:
                    break
                time.sleep(0.5)
        pytest.fail(
            "mlflow server did not start: "
            f"{(tmp_path / f'mlflow-server-{port}.log').read_text()[-2000:]}"
        )

    def stop(url: str) -> None:
        proc = procs.pop(url)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    start.stop = stop  # type: ignore[attr-defined]
    yield start
    for url in list(procs):
        stop(url)


@pytest.fixture(scope="module")
def team_stack():
    """The team stack (PostgreSQL, rclone S3, authenticated mlflow server) started in a tmp folder
    by pipeline_team.stack, for one test module; stopped by its recorded pids afterwards.

    Yields the `Stack`: `.env` (everything `stack env` exports), `.optuna_storage`, `.dir`,
    `.mlflow_url`. Skipped where PostgreSQL's binaries are missing, unless REQUIRE_STACK is set
    (CI), where it fails.
    """
    import os
    import shutil
    import tempfile

    from pipeline.core.errors import PipelineError
    from pipeline_team import stack
    from pipeline_team.stack import postgres

    try:
        postgres.pg_bin()
    except PipelineError as exc:
        if os.environ.get("REQUIRE_STACK"):
            pytest.fail(str(exc))
        pytest.skip(f"needs PostgreSQL 15 (apt-get install postgresql; .ci/run does): {exc}")
    # Not below pytest's tmp folder: that is private (0700) and PostgreSQL runs as the postgres
    # user.
    folder = Path(tempfile.mkdtemp(prefix="team-stack-"))
    folder.chmod(0o755)
    try:
        yield stack.start(folder / "stack")
    finally:
        try:
            stack.stop(folder / "stack")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
