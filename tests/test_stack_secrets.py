"""Every file the team stack writes a generated credential into is readable by its owner only:
DVC's `.dvc/config.local` here (tests/test_team.py scans a real stack's folder the same way)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pytest
from helpers import run

from pipeline_team import stack
from pipeline_team.stack import remote


def secret_holders(stack_: stack.Stack, files: Iterable[Path]) -> list[Path]:
    """Those of `files` that hold one of the stack's generated credentials."""
    config = stack_.config
    secrets = (
        config.pg_password,
        config.s3_key,
        config.s3_secret,
        config.mlflow_password,
        config.flask_secret,
    )
    found = []
    for path in files:
        try:
            data = path.read_bytes() if path.is_file() else b""
        except OSError:  # a socket, or PostgreSQL's own files when not run as root
            continue
        if any(secret.encode() in data for secret in secrets):
            found.append(path)
    return found


@pytest.mark.parametrize("existing", [False, True], ids=["new-config-local", "config-local-0644"])
def test_the_dvc_remote_keeps_the_s3_credentials_owner_only(tmp_path: Path, existing: bool) -> None:
    project = tmp_path / "project"
    project.mkdir()
    run(["git", "init", "-q"], project)
    # As this project's own .dvc/config: DVC's analytics daemon cannot send offline and leaves a
    # report file in the temporary folder for each dvc command.
    run(["dvc", "init", "-q"], project, DVC_NO_ANALYTICS="1")
    with (project / ".dvc" / "config").open("a") as config:
        config.write("[core]\n    analytics = false\n")
    config_local = project / ".dvc" / "config.local"
    if existing:  # as `make setup` leaves it: the offline plots page, readable by all
        config_local.write_text("[plots]\n    html_template = plots-offline.html\n")
        config_local.chmod(0o644)
    stack_ = stack.load(tmp_path / "stack", create=True)
    umask = os.umask(0o022)  # the usual one, whatever the test runner's
    try:
        remote.configure(stack_, project)
    finally:
        os.umask(umask)
    assert secret_holders(stack_, [config_local]) == [config_local]
    assert config_local.stat().st_mode & 0o777 == 0o600
    assert ("plots-offline.html" in config_local.read_text()) == existing
    assert run(["dvc", "remote", "default"], project).stdout.strip() == remote.NAME
