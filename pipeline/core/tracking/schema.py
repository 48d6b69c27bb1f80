"""Whether this MLflow can use a store's database: a sound SQLite file, a schema it knows.

A damaged file (truncated, not a database) surfaces in MLflow as a SQLAlchemy traceback, and a
schema written by a newer MLflow as MLflow's advice to run `mlflow db upgrade`, which cannot
downgrade it. Every command that opens the store (stages through store.check_reachable, tools
through store_errors) names both in the same one line.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import PipelineError, first_line

SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
# MLflow's own message for a schema other than its newest (it advises `mlflow db upgrade`).
MLFLOW_SCHEMA_MESSAGE = re.compile(r"out-of-date database schema \(found version (\w+)")


def check_sqlite(uri: str) -> None:
    """Raise PipelineError, in one line naming the file, unless the SQLite store at `uri` is missing
    (the first run creates it), empty, or a sound database whose schema this MLflow can use.

    Read-only, without mlflow (seconds): a damaged file (not a database, truncated: SQLite's
    quick_check) or a schema from another MLflow version would otherwise surface as a SQLAlchemy
    traceback, or as MLflow's advice to upgrade a schema that is newer than it.
    """
    db = Path(uri.removeprefix("sqlite:///"))
    if not str(db) or str(db) == ":memory:" or not db.is_file() or db.stat().st_size == 0:
        return
    with open(db, "rb") as fh:
        header = fh.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise PipelineError(damaged(uri, db, "not an SQLite database"))
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            verdict = [row[0] for row in conn.execute("PRAGMA quick_check(1)")]
            if verdict != ["ok"]:
                raise sqlite3.DatabaseError(f"quick_check: {verdict[0] if verdict else '?'}")
            has_version = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            ).fetchone()
            row = (
                conn.execute("SELECT version_num FROM alembic_version").fetchone()
                if (has_version)
                else None
            )
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:  # locked, unreadable: the file may be sound
        raise PipelineError(f"MLflow store {uri}: cannot read {db} ({first_line(exc)})") from None
    except sqlite3.DatabaseError as exc:
        raise PipelineError(damaged(uri, db, first_line(exc))) from None
    if row is not None:
        problem = schema_problem(uri, str(row[0]))
        if problem:
            raise PipelineError(problem)


def damaged(uri: str, db: Path, reason: str) -> str:
    """The one line for a store file that is not a sound SQLite database."""
    return (
        f"MLflow store {uri}: {db} is damaged ({reason}); restore it from a backup, or move it "
        "aside to start a fresh store"
    )


@functools.cache
def mlflow_revisions() -> tuple[str, ...]:
    """The alembic revisions of the installed MLflow's tracking schema, oldest first (read from its
    migration scripts, not imported: importing them imports mlflow, seconds)."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return ()
    versions = Path(next(iter(spec.submodule_search_locations))) / "store/db_migrations/versions"
    parent: dict[str, str | None] = {}
    for script in versions.glob("*.py"):
        text = script.read_text(encoding="utf-8")
        rev = re.search(r"^revision\s*=\s*['\"](\w+)['\"]", text, re.M)
        down = re.search(r"^down_revision\s*=\s*['\"](\w+)['\"]", text, re.M)
        if rev:
            parent[rev.group(1)] = down.group(1) if down else None
    children = set(parent.values())
    heads = [rev for rev in parent if rev not in children]
    chain: list[str] = []
    rev = heads[0] if len(heads) == 1 else None
    while rev is not None and rev not in chain:
        chain.append(rev)
        rev = parent.get(rev)
    return tuple(reversed(chain))


def schema_problem(uri: str, revision: str) -> str | None:
    """One line saying why this MLflow cannot use a store whose schema is at alembic `revision`, and
    what to do; None when it is this MLflow's newest (or the migration list is unreadable)."""
    known = mlflow_revisions()
    if not known or revision == known[-1]:
        return None
    version = importlib.metadata.version("mlflow")
    if revision not in known:
        return (
            f"MLflow store {uri}: written by a newer MLflow than the installed {version} (schema "
            f"revision {revision}, unknown to {version}, whose newest is {known[-1]}); "
            "`mlflow db upgrade` cannot downgrade it: use the MLflow version that wrote it "
            "(pip install -U mlflow) or a fresh store (another MLFLOW_TRACKING_URI)"
        )
    return (
        f"MLflow store {uri}: its schema (revision {revision}) is older than the installed MLflow "
        f"{version}'s ({known[-1]}); back it up, then run `mlflow db upgrade {uri}`"
    )


def describe_failure(uri: str, exc: BaseException) -> str:
    """One line for a store that failed under MLflow (its schema problem named as check_sqlite
    names it, for stores MLflow found first: PostgreSQL, MySQL)."""
    match = MLFLOW_SCHEMA_MESSAGE.search(str(exc))
    problem = schema_problem(uri, match.group(1)) if match else None
    return problem or f"MLflow store {uri}: {first_line(exc)}"


@contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """Raise a failure of the store at `uri` within the block (a refused request, a lost
    connection, a database error) as PipelineError, in one line."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (MlflowException, SQLAlchemyError, OSError) as exc:
        raise PipelineError(describe_failure(uri, exc)) from None
