"""`python -m pipeline stack` mistakes, each found before anything starts: one line, exit code 2.
(The stack running for real: test_team.py.)"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from helpers import REPO, assert_one_line_error, run

from pipeline_team import stack


def test_stack_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    # No servers needed: each mistake is found before anything starts.
    folder = tmp_path / "stack"
    cmd = ["python", "-m", "pipeline", "stack"]
    assert_one_line_error(
        run([*cmd, "status", "--dir", str(folder)], REPO, check=False), "no stack here"
    )
    assert_one_line_error(
        run(
            [*cmd, "start", "--dir", str(folder)],
            REPO,
            check=False,
            PIPELINE_PG_BIN=str(tmp_path / "nowhere"),
        ),
        "PostgreSQL server binaries not found",
    )
    config = stack.load(folder, create=True).config
    # The checks below come after the binaries': stand-ins let them run where PostgreSQL is missing.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name in ("pg_ctl", "initdb"):
        (fake_bin / name).touch()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", config.ports["s3"]))
        busy.listen()
        proc = run(
            [*cmd, "start", "--dir", str(folder)], REPO, check=False, PIPELINE_PG_BIN=str(fake_bin)
        )
    assert_one_line_error(proc, f"port {config.ports['s3']}", "in use")
    (folder / "pids.json").write_text(
        json.dumps({"s3": {"pid": 2**22 + 1, "created": 1.0, "session": True}})
    )
    proc = run(
        [*cmd, "stop", "--dir", str(folder)], REPO
    )  # a record whose processes are gone: just forgotten
    assert (
        "s3: was not running (record removed)" in proc.stdout
        and not (folder / "pids.json").exists()
    )
    # A colleague's clone names the stack that runs; without it, the error says how.
    assert_one_line_error(
        run([*cmd, "env"], REPO, check=False, PIPELINE_STACK_DIR=str(tmp_path / "none")), "--dir"
    )
