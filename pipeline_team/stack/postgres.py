"""The stack's PostgreSQL 15 cluster: Debian's binaries, run as the postgres user when root, TCP on
127.0.0.1 only."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from pipeline.core.errors import PipelineError, first_line
from pipeline.core.repo import executable
from pipeline_team.stack.config import (
    DATABASES,
    PG_USER,
    WAIT_SECONDS,
    Stack,
    write_private,
)

PG_BIN_DEFAULT = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql-15 package


def pg_bin() -> Path:
    """The folder of PostgreSQL 15's server binaries (PIPELINE_PG_BIN overrides Debian's path)."""
    candidates = (
        [Path(os.environ["PIPELINE_PG_BIN"])]
        if os.environ.get("PIPELINE_PG_BIN")
        else [PG_BIN_DEFAULT]
    )
    if not os.environ.get("PIPELINE_PG_BIN") and shutil.which("pg_ctl"):
        candidates.append(Path(shutil.which("pg_ctl")).resolve().parent)  # type: ignore[arg-type]
    for folder in candidates:
        if (folder / "pg_ctl").is_file() and (folder / "initdb").is_file():
            return folder
    raise PipelineError(
        f"PostgreSQL server binaries not found in {candidates[0]}: apt-get install postgresql "
        "(or set PIPELINE_PG_BIN to the folder holding pg_ctl and initdb)"
    )


def _as_postgres() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its binaries as the `postgres` system
    user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PipelineError(
            "as root, PostgreSQL must run as the `postgres` system user, which does not exist: "
            "apt-get install postgresql creates it"
        ) from None
    return [executable("runuser"), "-u", "postgres", "--"]


def _pg_dirs(stack: Stack) -> tuple[Path, Path, Path]:
    home = stack.dir / "postgres"
    return home, home / "data", home / "postgres.log"


def _pg_run(stack: Stack, *args: str) -> None:
    """Run a PostgreSQL binary (as the postgres user when root); its output's last line on
    failure."""
    proc = subprocess.run(
        [*_as_postgres(), str(pg_bin() / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "failed").splitlines()
        _, _, log = _pg_dirs(stack)
        raise PipelineError(f"postgres: {args[0]} {args[1]}: {lines[-1]} (log {log})")


def _init_postgres(stack: Stack) -> None:
    """initdb on the first start: password authentication, TCP on 127.0.0.1 only, no Unix socket."""
    home, data, _ = _pg_dirs(stack)
    if (data / "PG_VERSION").exists():
        return
    home.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
        _check_reachable_by_postgres(home)
    pwfile = home / "pwfile"
    write_private(pwfile, stack.config.pg_password + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    try:
        _pg_run(
            stack,
            "initdb",
            "-D",
            str(data),
            "-U",
            PG_USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        )
    finally:
        pwfile.unlink(missing_ok=True)
    with open(data / "postgresql.conf", "a") as fh:
        # A socket in /var/run/postgresql would need that folder; TCP on loopback is all the stack
        # uses.
        fh.write(
            "\n# python -m pipeline stack\nlisten_addresses = '127.0.0.1'\nport = "
            f"{stack.config.ports['postgres']}\n"
            "unix_socket_directories = ''\nmax_connections = 50\n"
        )


def _check_reachable_by_postgres(folder: Path) -> None:
    """The postgres user must be able to traverse every parent folder (a tmp folder may be 0700)."""
    for parent in folder.parents:
        if not os.stat(parent).st_mode & 0o001:
            raise PipelineError(
                f"{parent}: the postgres user cannot enter this folder (mode "
                f"{oct(os.stat(parent).st_mode & 0o777)}); use a --dir below folders others can "
                "traverse"
            )


def create_databases(stack: Stack) -> None:
    """The databases of the stack, created once (CREATE DATABASE cannot run inside a
    transaction)."""
    import psycopg2

    try:
        conn = psycopg2.connect(
            host="127.0.0.1",
            port=stack.config.ports["postgres"],
            user=PG_USER,
            password=stack.config.pg_password,
            dbname="postgres",
            connect_timeout=10,
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT datname FROM pg_database")
                existing = {row[0] for row in cur.fetchall()}
                for name in DATABASES:
                    if name not in existing:
                        cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
    except psycopg2.Error as exc:
        _, _, log = _pg_dirs(stack)
        raise PipelineError(
            f"postgres: creating the databases: {first_line(exc)} (log {log})"
        ) from None


def start(stack: Stack) -> int:
    """pg_ctl start; the postmaster's pid. Databases are created by the caller, once the pid is
    written down: whatever fails after this point, `stop` can still find the server."""
    _init_postgres(stack)
    _, data, log = _pg_dirs(stack)
    try:
        _pg_run(
            stack,
            "pg_ctl",
            "start",
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            str(int(WAIT_SECONDS)),
        )
    except BaseException:  # a timeout may leave the server coming up, with no pid recorded yet
        subprocess.run(
            [*_as_postgres(), str(pg_bin() / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        raise
    return int((data / "postmaster.pid").read_text().splitlines()[0])


def stop(stack: Stack) -> None:
    """pg_ctl stop (fast: open connections are closed, the data is flushed)."""
    _, data, _ = _pg_dirs(stack)
    _pg_run(stack, "pg_ctl", "stop", "-D", str(data), "-m", "fast", "-w")
