"""Shared fixtures: a throwaway copy of this project as its own git + DVC repository."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# The learning rate params.yaml ships with, as MLflow shows it; experiments in the tests change it to 0.01.
DEFAULT_LR = str(yaml.safe_load((REPO / "params.yaml").read_text())["train"]["lr"])
assert DEFAULT_LR != "0.01"

# One epoch on a small subset: the real code paths in seconds.
TINY_PARAMS = {"data": {"limit": 2000, "val_size": 500}, "train": {"epochs": 1, "batch_size": 64}}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: this interpreter's bin first, no inherited MLflow/DVC state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output when `check` and it fails."""
    proc = subprocess.run(cmd, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def project_files() -> list[str]:
    """The files of this project as git sees them (tracked, plus new files not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    # Pipeline outputs are never part of a fresh clone, whatever the working tree holds.
    outputs = ("data/", "models/", "metrics/", "plots/", "mlruns/", "test-artifacts/", "dvc.lock", ".venv")
    return [f for f in out if f and not f.startswith(outputs) and (REPO / f).is_file()]


def create_project(root: Path, params: dict | None = None) -> Path:
    """A git repository at `root` holding this project's files with tiny parameters, committed."""
    for rel in project_files():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    current = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(merge(current, merge(TINY_PARAMS, params or {})), sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "config", "user.email", "tests@example.invalid"], root)
    run(["git", "config", "user.name", "tests"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "project under test"], root)
    return root


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    """Factory: create_project in this test's temporary folder."""
    return lambda params=None, name="project": create_project(tmp_path / name, params)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
