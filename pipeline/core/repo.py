"""The git checkout and child processes: the one git helper and the one environment scrubber."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.core.errors import PipelineError


def git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    """Run git and return its stdout, stripped.

    With `check`, a failure raises PipelineError with git's last line; without it, a failure (or no
    git at all) returns "" — for provenance tags, which must never stop a run.
    """
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
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
