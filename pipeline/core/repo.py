"""The git checkout and child processes: the one git helper, the one environment scrubber and the
one place external commands are found."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.core.errors import PipelineError

# How to get each external command the project runs, for the line naming one that is missing.
PIP = "pip install -r requirements.txt into this interpreter's environment"
INSTALL = {
    "dvc": PIP,
    "mlflow": PIP,
    "rclone": "pip install -r requirements-team.txt (or install rclone on PATH)",
    "git": "install git (apt-get install git)",
    "npm": "install Node.js and npm (apt-get install npm)",
    "runuser": "install util-linux (apt-get install util-linux)",
}
# Where system administration commands live (runuser): not on every user's PATH.
SYSTEM_BIN = "/usr/local/sbin:/usr/sbin:/sbin"


def executable(name: str) -> str:
    """The path of external command `name`, for subprocess: the one installed beside this
    interpreter (its environment's bin, where pip puts dvc and mlflow: found whether or not the
    environment is activated), else the first on PATH, else in the system's sbin folders.

    Raises PipelineError naming the command and how to get it when there is none: a tool must not
    die with FileNotFoundError's traceback because a shell's PATH lacks a folder.
    """
    beside = Path(sys.executable).parent / name  # not resolved: a venv's python is a symlink
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name) or shutil.which(name, path=SYSTEM_BIN)
    if found:
        return found
    raise PipelineError(
        f"{name}: command not found beside {sys.executable} nor on PATH "
        f"({os.environ.get('PATH', '')}); {INSTALL.get(name, f'install {name}')}"
    )


def git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    """Run git and return its stdout, stripped.

    With `check`, a failure raises PipelineError with git's last line; without it, a failure (or no
    git at all) returns "" — for provenance tags, which must never stop a run.
    """
    try:
        cmd = [executable("git"), *args]
    except PipelineError:
        if check:
            raise
        return ""
    try:
        # A committed file that is not UTF-8 (`git show REV:params.yaml`) comes back with its bad
        # bytes as lone surrogates, which the YAML reader refuses in one line, naming the file.
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="surrogateescape",
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        if check:
            raise PipelineError(f"git {' '.join(args)}: {exc}") from None
        return ""
    if proc.returncode != 0:
        if check:
            last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
            raise PipelineError(f"git {' '.join(args)}: {last}")
        return ""
    return proc.stdout.strip()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child `dvc`/`python`: this interpreter's bin first on PATH, and none of
    the MLFLOW_*/DVC_* variables of the caller (a child pipeline must pick its own store and
    root)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env
