"""`python -m pipeline stack start|stop|status|env|remote`: a team tracking stack on 127.0.0.1, one
command.

Three existing engines, each a process of its own: PostgreSQL 15 (databases `mlflow`, `mlflow_auth`
and `optuna`), an S3 store (`rclone serve s3` over a folder; buckets `mlflow` and `dvc`) and
`mlflow server` with its backend in PostgreSQL, artifacts proxied to `s3://mlflow/artifacts`
(clients never need S3 credentials for MLflow) and basic authentication. Ports and credentials are
generated on the first start and saved (mode 0600) in the stack folder, so a restart reuses them and
runs survive. `start` also points this clone's DVC remote `team` at the stack (`.dvc/config.local`,
never committed).

The logic is in plain functions (`start`, `stop`, `status`) that the tests call; `commands` prints.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline_team.stack import postgres, servers
from pipeline_team.stack.config import (
    COMPONENTS,
    MLFLOW_ADMIN,
    PIDS_FILE,
    Stack,
    load,
    write_private,
)
from pipeline_team.stack.processes import Record, listener


def read_records(stack: Stack) -> dict[str, Record]:
    """What `start` recorded: a Record per component."""
    try:
        return {
            name: Record(**rec)
            for name, rec in json.loads((stack.dir / PIDS_FILE).read_text()).items()
        }
    except (OSError, ValueError, TypeError):
        return {}


def _write_records(stack: Stack, records: dict[str, Record]) -> None:
    write_private(
        stack.dir / PIDS_FILE, json.dumps({k: asdict(v) for k, v in records.items()}, indent=2)
    )


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _check_free(stack: Stack) -> None:
    """Nothing of an earlier start is left, and every port is free (or one line naming what holds
    it)."""
    left = {name: rec for name, rec in read_records(stack).items() if rec.members()}
    if left:
        what = ", ".join(
            f"{name} (pids {', '.join(str(p.pid) for p in rec.members())})"
            for name, rec in left.items()
        )
        raise PipelineError(
            f"the stack in {stack.dir} still has processes running: {what}; "
            "`python -m pipeline stack status` shows them, `stack stop` stops them"
        )
    for name in COMPONENTS:
        port = stack.config.ports[name]
        if _port_busy(port):
            holder = listener(port)
            who = f"{holder.name()} (pid {holder.pid})" if holder else "another program"
            # The ports are kept for good: they are in everyone's exports and in postgresql.conf.
            raise PipelineError(
                f"port {port} on 127.0.0.1 (for {name}) is in use by {who}, not by this stack; "
                "stop that program and start again"
            )


def start(stack_dir: Path) -> Stack:
    """Start PostgreSQL, the S3 store and the MLflow server of the stack in `stack_dir` (created on
    the first start), wait until each answers, record their processes. Whatever it started is
    stopped again if a later piece fails. Returns the stack with `timings` (seconds per piece and in
    total)."""
    began = time.monotonic()
    postgres.pg_bin()  # before creating anything: a machine without PostgreSQL fails in one line
    stack = load(stack_dir, create=True)
    _check_free(stack)
    records: dict[str, Record] = {}
    try:
        t = time.monotonic()
        records["postgres"] = Record.of(postgres.start(stack))
        _write_records(stack, records)  # from here on, `stop` finds it whatever fails next
        postgres.create_databases(stack)
        stack.timings["postgres"] = time.monotonic() - t
        for name, launch, ready in (
            ("s3", servers.start_s3, lambda: servers.http_status(stack.s3_endpoint) != 0),
            (
                "mlflow",
                servers.start_mlflow,
                lambda: (
                    servers.http_status(
                        f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1",
                        (MLFLOW_ADMIN, stack.config.mlflow_password),
                    )
                    == 200
                ),
            ),
        ):
            t = time.monotonic()
            proc = launch(stack)
            records[name] = Record.of(proc.pid)
            _write_records(stack, records)
            servers.wait(stack, name, proc, ready)
            stack.timings[name] = time.monotonic() - t
    except BaseException:
        stop(stack.dir)
        raise
    stack.timings["total"] = time.monotonic() - began
    return stack


def stop(stack_dir: Path) -> list[str]:
    """Stop every process of every recorded piece (a leader's orphaned workers too), newest first,
    and forget the records. Returns one line per piece."""
    stack = load(stack_dir)
    records = read_records(stack)
    lines = []
    for name in reversed(COMPONENTS):
        record = records.pop(name, None)
        if record is None:
            continue
        members = record.members()
        if name == "postgres" and record.leader_alive():
            postgres.stop(stack)  # a clean shutdown: PostgreSQL flushes its data
        record.stop()
        pids = ", ".join(str(p.pid) for p in members)
        lines.append(
            f"{name}: stopped (pids {pids})"
            if members
            else f"{name}: was not running (record removed)"
        )
        _write_records(stack, records)
    (stack.dir / PIDS_FILE).unlink(missing_ok=True)
    return lines or ["not running"]


@dataclass(frozen=True)
class ComponentStatus:
    """One piece of the stack as `status` sees it."""

    name: str
    port: int
    # "running", "stopped", or "broken: …" (its leader gone, other processes of it still there).
    state: str
    pids: tuple[int, ...]
    rss_mib: float

    @property
    def running(self) -> bool:
        return self.state == "running"


def status(stack_dir: Path) -> list[ComponentStatus]:
    """Each piece: its processes, whether the one `start` launched still runs, its port and
    memory."""
    stack = load(stack_dir)
    records = read_records(stack)
    out = []
    for name in COMPONENTS:
        record = records.get(name)
        members = record.members() if record else []
        if record is None or not members:
            state = "stopped"
        elif record.leader_alive():
            state = "running"
        else:
            state = (
                f"broken: pid {record.pid} is gone but {len(members)} of its processes run on; "
                "`stack stop` ends them"
            )
        out.append(
            ComponentStatus(
                name,
                stack.config.ports[name],
                state,
                tuple(p.pid for p in members),
                record.rss_mib() if members else 0.0,
            )
        )
    return out
