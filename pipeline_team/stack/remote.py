"""This clone's DVC remote `team`, pointed at a stack's S3 store: written to `.dvc/config.local`
(never committed; readable by its owner only, as it holds the S3 secret).

The committed `.dvc/config` names no remote, so a solo clone's `dvc push` says plainly that none is
configured. The remote written here names its endpoint and credentials, so it can only ever reach
the stack's store: never a public bucket of the same name with whatever cloud credentials a shell
has.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.repo import clean_env, executable
from pipeline_team.stack.config import Stack, make_private

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
    dvc = executable("dvc")
    commands = [[dvc, "remote", "add", "--local", "--force", "--default", NAME, URL]]
    commands += [
        [dvc, "remote", "modify", "--local", NAME, key, value] for key, value in settings.items()
    ]
    # DVC writes config.local in place, keeping its mode, but creates it with the umask's (0644,
    # readable by every user): made owner-only before the secret goes in, and again after in case a
    # DVC version replaces the file instead.
    config_local = project / ".dvc" / "config.local"
    if config_local.parent.is_dir():  # else not a DVC project: dvc says so below
        make_private(config_local)
    shown = []
    try:
        for cmd in commands:
            proc = subprocess.run(
                cmd, cwd=project, env=clean_env(), capture_output=True, text=True, timeout=120
            )
            shown_cmd = ["dvc", *cmd[1:-1], "***" if "secret" in cmd[-2] else cmd[-1]]
            if proc.returncode != 0:
                last = (proc.stderr.strip() or "failed").splitlines()[-1]
                raise PipelineError(f"{' '.join(shown_cmd[:5])}: {last}")
            shown.append(" ".join(shown_cmd))
    finally:
        if config_local.exists():
            make_private(config_local)
    return shown
