"""Helpers shared by the tests: a throwaway copy of this project as its own git + DVC repository,
commands, stores."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from pipeline.core.params import merge
from pipeline.core.repo import clean_env

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = yaml.safe_load((REPO / "params.yaml").read_text())["mlflow"]["experiment_name"]

# The learning rate params.yaml ships with, as MLflow shows it; experiments in the tests change it
# to OTHER_LR.
DEFAULT_LR = str(yaml.safe_load((REPO / "params.yaml").read_text())["train"]["lr"])
OTHER_LR = "0.005"
assert DEFAULT_LR != OTHER_LR

# One epoch on a small subset: the real code paths in seconds.
TINY_PARAMS = {"data": {"limit": 2000, "val_size": 500}, "train": {"epochs": 1, "batch_size": 64}}


def run(
    cmd: list[str], cwd: Path, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output when `check` and it fails."""
    proc = subprocess.run(
        cmd, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=900
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited "
            f"{proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


# Made by the set-up command, not committed; a fresh clone has it after `make setup`.
GENERATED = (".dvc/plots-offline.html",)


def project_files() -> list[str]:
    """The files of this project as a fresh clone has them after set-up: tracked, new and not
    ignored, and the generated ones."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    # Pipeline outputs are never part of a fresh clone, whatever the working tree holds.
    outputs = (
        "data/",
        "models/",
        "metrics/",
        "plots/",
        "mlruns/",
        "test-artifacts/",
        "dvc.lock",
        ".venv",
    )
    return [
        f for f in [*out, *GENERATED] if f and not f.startswith(outputs) and (REPO / f).is_file()
    ]


def create_project(root: Path, params: dict | None = None) -> Path:
    """A git repository at `root` holding this project's files with tiny parameters, committed."""
    for rel in project_files():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    current = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(
        yaml.safe_dump(merge(current, merge(TINY_PARAMS, params or {})), sort_keys=False)
    )
    if (
        root / ".dvc/plots-offline.html"
    ).exists():  # what `make setup` names in the clone's own config
        (root / ".dvc/config.local").write_text("[plots]\n    html_template = plots-offline.html\n")
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "config", "user.email", "tests@example.invalid"], root)
    run(["git", "config", "user.name", "tests"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "project under test"], root)
    return root


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def store(root: Path):  # -> MlflowClient
    """A client of the project-root MLflow store of `root`."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def model_uri(run) -> str:  # run: mlflow.entities.Run
    """The URI of the model a run logged (`models:/ID`: MLflow 3 keys models by id, not by run
    path)."""
    (output,) = run.outputs.model_outputs
    return f"models:/{output.model_id}"


def runs(root: Path) -> list:
    """The runs of the project's experiment in its project-root store, oldest first."""
    client = store(root)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, "the experiment was not created in the project-root store"
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit code 2, exactly one `error: …` line on stderr containing every needle, no traceback."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def fit_tiny(model, images, labels, fit_idx, val_idx, cfg, on_epoch=None):  # -> loop.TrainState
    """The loop on in-memory tensors exactly as core.trainer drives it (data on the device, the
    model placed, the optimization built once), for unit tests of models and the loop."""
    from pipeline.core import loop, runtime
    from pipeline.core.optim import Optimization

    rt = runtime.make_runtime(cfg)
    data = loop.TrainData.on(rt, images, labels, fit_idx, (images[val_idx], labels[val_idx]))
    model = rt.place(model)
    opt = Optimization.build(model, cfg, data.batches_per_epoch(cfg.batch_size))
    return loop.fit(
        model,
        data,
        opt,
        cfg,
        rt,
        loop.TrainState.start(0),
        on_epoch or (lambda result, state: None),
    )


# Not the project's outputs: git's and DVC's own state, and the MLflow store (a failed run may be
# recorded).
NOT_OUTPUTS = (".git/", ".dvc/", "mlflow.db", "mlruns/", "checkpoints/")


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file of the project (code, parameters, data, every output), by relative
    path."""
    import hashlib

    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(NOT_OUTPUTS):
            files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def assert_unchanged(before: dict[str, str], after: dict[str, str]) -> None:
    """Every file byte-identical, nothing missing, nothing new."""
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    missing, new = sorted(before.keys() - after.keys()), sorted(after.keys() - before.keys())
    assert not (changed or missing or new), f"changed {changed}, missing {missing}, new {new}"


def finished_project(root: Path) -> Path:
    """A project after a whole `dvc repro`, its results committed: what a user has after day one."""
    create_project(root)
    run(["dvc", "repro"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "results"], root)
    return root


CHROMIUM = Path("/usr/bin/chromium")
# As root, in a machine whose network is closed: no sandbox, no GPU, none of Chromium's own traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium() -> Iterator:  # -> playwright Browser
    """Debian's headless Chromium driven by Playwright (skipped where it is not installed, unless
    CI)."""
    import os

    if not CHROMIUM.exists():
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip("needs Debian's chromium: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
