"""Helpers shared by the tests: a throwaway copy of this project as its own git + DVC repository,
commands, stores."""

from __future__ import annotations

import hashlib
import io
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.params import merge
from pipeline.core.repo import clean_env
from pipeline.core.yamlio import read_yaml

REPO = Path(__file__).resolve().parents[1]


def read_params(path: Path) -> dict[str, Any]:
    """A params.yaml as the pipeline and DVC read it (ruamel.yaml, YAML 1.2; PyYAML's YAML 1.1
    reads `4:2` as 242 and `off` as False)."""
    return read_yaml(path.read_text(), str(path))


def write_params(path: Path, values: dict[str, Any]) -> None:
    """Nested `values` as the text of a params file (ruamel.yaml, YAML 1.2, block style, keys in
    the given order), so read_params gives them back equal."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    yaml.default_flow_style = False  # one key a line: tests edit single lines (`  lr: …`)
    yaml.sort_base_mapping_type_on_output = False
    out = io.StringIO()
    yaml.dump(values, out)
    path.write_text(out.getvalue())


EXPERIMENT = read_params(REPO / "params.yaml")["mlflow"]["experiment_name"]

# The learning rate params.yaml ships with, as MLflow shows it; experiments in the tests change it
# to OTHER_LR.
DEFAULT_LR = str(read_params(REPO / "params.yaml")["train"]["lr"])
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
    current = read_params(REPO / "params.yaml")
    write_params(root / "params.yaml", merge(current, merge(TINY_PARAMS, params or {})))
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


def weights_stage(
    root: Path, values: dict[str, object], **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline.stages.weights` in `root`, made a project root holding the committed
    params.yaml with `values` ("section.name": value), torch's hub cache under it."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in values.items():
        section, name = key.split(".")
        params[section][name] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / ".dvc").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "pipeline.stages.weights"],
        cwd=root,
        env=clean_env(PYTHONPATH=str(REPO), TORCH_HOME=str(root / "torch"), **env),
        capture_output=True,
        text=True,
    )


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
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(NOT_OUTPUTS):
            files[rel] = sha256(path)
    return files


def written(root: Path) -> list[str]:
    """Every file and folder below `root` but params.yaml, relative, sorted: what a command that
    must write nothing wrote."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name != "params.yaml")


def sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex (64 characters)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_unchanged(before: dict[str, str], after: dict[str, str]) -> None:
    """Every file byte-identical, nothing missing, nothing new."""
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    missing, new = sorted(before.keys() - after.keys()), sorted(after.keys() - before.keys())
    assert not (changed or missing or new), f"changed {changed}, missing {missing}, new {new}"


def refused_in_one_line(
    root: Path,
    command: list[str],
    needles: tuple[str, ...],
    files: dict[str, Any] | None = None,
    params: dict | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Make a mistake in the project at `root`, run `command` there, assert the one-line error
    holding every needle and every file byte-identical, then undo the mistake.

    The mistake: `files` maps a relative path to a function of its old bytes (b"" when new)
    giving its new bytes; `params` is merged into params.yaml; `env` is set for the command.
    """
    originals: dict[Path, bytes | None] = {}
    for rel in [*(files or {}), "params.yaml"]:
        path = root / rel
        originals[path] = path.read_bytes() if path.exists() else None
    try:
        for rel, edit in (files or {}).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(edit(originals[root / rel] or b""))
        if params:
            write_params(root / "params.yaml", merge(read_params(root / "params.yaml"), params))
        before = snapshot(root)
        proc = run(command, root, check=False, **(env or {}))
        assert_one_line_error(proc, *needles)
        assert_unchanged(before, snapshot(root))
    finally:
        for path, data in originals.items():
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(data)


def start(root: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """`python -m pipeline ARGS` started in `root`, unbuffered, stdout and stderr merged into one
    text pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(PYTHONUNBUFFERED="1", **env),
    )


def stop_train_after_epoch(
    root: Path, epoch_line: str, sig: signal.Signals = signal.SIGKILL
) -> tuple[int, str]:
    """Start `python -m pipeline train` in `root`, send it `sig` as soon as it prints a line
    starting with `epoch_line` (e.g. "epoch 1/3"), wait for it; returns its exit code (negative:
    killed by that signal) and everything it printed. Fails the test when it ends without printing
    that line."""
    proc = start(root, "train")
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(epoch_line):
            proc.send_signal(sig)
            break
    else:
        proc.wait(timeout=60)
        pytest.fail(f"train ended before {epoch_line!r}:\n{''.join(seen)}")
    seen.append(proc.communicate(timeout=120)[0])
    return proc.returncode, "".join(seen)


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
