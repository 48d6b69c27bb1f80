"""This clone's DVC remote `team`, pointed at a stack's S3 store: written to `.dvc/config.local`
(never committed).

The committed `.dvc/config` names no remote, so a solo clone's `dvc push` says plainly that none is
configured. The remote written here names its endpoint and credentials, so it can only ever reach
the stack's store: never a public bucket of the same name with whatever cloud credentials a shell
has.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.repo import clean_env
from pipeline_team.stack.config import Stack

NAME = "team"
URL = "s3://dvc/pipeline"


def configure(stack: Stack, project: Path) -> list[str]:
    """Make `team` the default remote of the DVC project at `project`, on `stack`'s S3 store;
    returns the `dvc` commands run (with the secret elided). Raises PipelineError when dvc
    refuses."""
    settings = {
        "endpointurl": stack.s3_endpoint,
        "access_key_id": stack.config.s3_key,
        "secret_access_key": stack.config.s3_secret,
        "region": "us-east-1",
    }
    commands = [["dvc", "remote", "add", "--local", "--force", "--default", NAME, URL]]
    commands += [
        ["dvc", "remote", "modify", "--local", NAME, key, value] for key, value in settings.items()
    ]
    shown = []
    for cmd in commands:
        proc = subprocess.run(
            cmd, cwd=project, env=clean_env(), capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            raise PipelineError(
                f"{' '.join(cmd[:5])}: {(proc.stderr.strip() or 'failed').splitlines()[-1]}"
            )
        shown.append(" ".join(cmd if "secret" not in cmd[-2] else [*cmd[:-1], "***"]))
    return shown
