"""External commands (dvc, git, npm, mlflow, rclone, runuser) are found through repo.executable:
a tool run by the venv's python outside the activated environment, or with a PATH missing a
command, answers in one line, never FileNotFoundError's traceback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, assert_one_line_error, create_project

from pipeline.core.errors import PipelineError
from pipeline.core.repo import executable

SYSTEM_PATH = "/usr/bin:/bin"  # a shell without the venv activated

# Every external command the project runs.
COMMANDS = ("dvc", "git", "npm", "mlflow", "rclone", "runuser")


def run_with_path(args: list[str], cwd: Path, path: str) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline ARGS` by the venv's python (not resolved: its bin is the venv's), with
    PATH exactly `path` and no activated environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_project(tmp_path_factory.mktemp("path") / "project")


def test_every_external_command_goes_through_executable() -> None:
    """No subprocess call names a command by a bare string: each goes through executable(), whose
    error says how to get the command. (sys.executable children are the interpreter itself.)"""
    # A list literal starting with a command name (not an index such as ports["mlflow"]).
    bare = re.compile(r"""(?<![\w\])])\[\s*["']({})["']""".format("|".join(COMMANDS)))
    found = {}
    for package in ("pipeline", "pipeline_tools", "pipeline_team"):
        for path in sorted((REPO / package).rglob("*.py")):
            hits = bare.findall(path.read_text())
            if hits:
                found[path.relative_to(REPO).as_posix()] = hits
    # These show a dvc command as a user would type it and run it with executable("dvc") in place
    # of its first word (the sweep's trial: with trial_env, whose PATH starts with the venv's bin).
    shown = (
        "pipeline_tools/preset.py",
        "pipeline_team/sweep/worker.py",
        "pipeline_team/stack/remote.py",
    )
    assert found == {key: ["dvc"] for key in shown}


def test_commands_of_the_venv_are_found_without_it_on_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", SYSTEM_PATH)
    for name in ("dvc", "mlflow"):
        assert executable(name) == str(Path(sys.executable).parent / name)


def test_a_missing_command_is_named_with_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PipelineError, match=r"^npm: command not found .*apt-get install npm"):
        executable("npm")
    with pytest.raises(PipelineError, match="no-such-command-here: command not found"):
        executable("no-such-command-here")


@pytest.mark.skipif(shutil.which("npm", path=SYSTEM_PATH) is None, reason="needs npm in /usr/bin")
def test_plots_template_outside_the_venv(project: Path) -> None:
    # The reported case: npm found on PATH, dvc beside the venv's python, not on PATH.
    proc = run_with_path(["plots-template"], project, SYSTEM_PATH)
    assert proc.returncode == 0, proc.stderr
    assert "html_template = plots-offline.html" in (project / ".dvc/config.local").read_text()
    assert (project / ".dvc/plots-offline.html").stat().st_size > 100_000


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["plots-template"], "npm"),
        (["baseline"], "git"),
        (["report", "--baseline", "HEAD"], "git"),
    ],
)
def test_tools_name_a_command_missing_from_path(
    project: Path, tmp_path: Path, args: list[str], command: str
) -> None:
    before = (project / "params.yaml").read_text()
    proc = run_with_path(args, project, str(tmp_path))  # an empty folder: nothing on PATH
    assert_one_line_error(proc, f"{command}: command not found", "install")
    assert (project / "params.yaml").read_text() == before
