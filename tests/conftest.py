"""Fixtures: a throwaway project per test, and real `mlflow server` processes stopped by their pid."""
from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import create_project, free_port
from pipeline.core.repo import clean_env


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    """Factory: create_project in this test's temporary folder."""
    return lambda params=None, name="project": create_project(tmp_path / name, params)


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """Factory: start a real `mlflow server` on a free loopback port; returns its URL. Stopped after the test."""
    import time
    import urllib.request

    procs: list[subprocess.Popen] = []

    def start(backend: str | None = None, artifacts: Path | None = None) -> str:
        port = free_port()
        cmd = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", backend or f"sqlite:///{tmp_path / f'server-{port}.db'}"]
        if artifacts is not None:
            cmd += ["--artifacts-destination", str(artifacts)]
        log = open(tmp_path / f"mlflow-server-{port}.log", "w")
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(), stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        # Loopback never goes through a proxy, whatever an earlier test left in urllib's global opener.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with opener.open(f"{url}/health", timeout=2):
                    return url
            except OSError:
                if procs[-1].poll() is not None:
                    break
                time.sleep(0.5)
        pytest.fail(f"mlflow server did not start: {(tmp_path / f'mlflow-server-{port}.log').read_text()[-2000:]}")

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
