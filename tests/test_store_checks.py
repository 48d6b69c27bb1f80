"""A store the pipeline cannot use (damaged, written by a newer MLflow, a server that does not
answer): every command that opens it, stage or tool, says so in the same one line, exit code 2."""

from __future__ import annotations

import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
from helpers import assert_one_line_error, create_project, free_port, run

from pipeline.core.errors import PipelineError
from pipeline.core.tracking import schema

NEWER_REVISION = "ffffffffffff"  # an alembic revision id no MLflow release uses

# Every command that opens the MLflow store (grep MlflowClient, MlflowTracker, BackgroundTracker in
# pipeline/stages, pipeline_tools, pipeline_team): each reaches it through store.check_reachable.
COMMANDS = {
    "train": ["train"],
    "evaluate": ["evaluate"],
    "compare": ["compare", "--last", "2"],
    "reproduce": ["reproduce", "--run-id", "0" * 32],
    "sweep": ["sweep", "--trials", "1"],
}


def _truncate(db: Path) -> None:
    with open(db, "r+b") as fh:
        fh.truncate(db.stat().st_size // 2)


def _not_a_database(db: Path) -> None:
    db.write_bytes(b"experiment notes, saved over the store by mistake\n" * 200)


def _newer_schema(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (NEWER_REVISION,))


# damage -> (what it does to a sound mlflow.db, what the one line must say)
DAMAGES = {
    "truncated": (_truncate, ("mlflow.db is damaged", "malformed")),
    "not-a-database": (_not_a_database, ("mlflow.db is damaged", "not an SQLite database")),
    "newer-schema": (_newer_schema, ("written by a newer MLflow", NEWER_REVISION, "fresh store")),
}


@pytest.fixture(scope="module")
def sound_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real MLflow SQLite store holding an experiment and a few runs with metrics."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.create_experiment("store-checks")
    for i in range(5):
        run_id = client.create_run(exp).info.run_id
        for step in range(50):
            client.log_metric(run_id, "val_accuracy", i + step / 100, step=step)
    return db


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_project(tmp_path_factory.mktemp("checks") / "project")


@pytest.mark.parametrize("damage", [*DAMAGES, "unreachable-server"])
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_names_an_unusable_store_in_one_line(
    project: Path, sound_store: Path, command: str, damage: str
) -> None:
    db = project / "mlflow.db"
    env: dict[str, str] = {}
    if damage == "unreachable-server":
        db.unlink(missing_ok=True)
        env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"
        needles: tuple[str, ...] = (env["MLFLOW_TRACKING_URI"], "unreachable")
    else:
        shutil.copy(sound_store, db)
        make, needles = DAMAGES[damage]
        make(db)
    before = db.read_bytes() if db.exists() else None
    proc = run([sys.executable, "-m", "pipeline", *COMMANDS[command]], project, check=False, **env)
    assert_one_line_error(proc, *needles)
    assert (db.read_bytes() if db.exists() else None) == before  # the store is left as it was


def test_an_older_schema_keeps_the_upgrade_advice(sound_store: Path, tmp_path: Path) -> None:
    db = shutil.copy(sound_store, tmp_path / "mlflow.db")
    older = schema.mlflow_revisions()[-2]
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (older,))
    with pytest.raises(PipelineError, match=f"revision {older}.*older.*mlflow db upgrade"):
        schema.check_sqlite(f"sqlite:///{db}")


def test_a_sound_store_and_a_missing_one_pass(sound_store: Path, tmp_path: Path) -> None:
    schema.check_sqlite(f"sqlite:///{sound_store}")
    schema.check_sqlite(f"sqlite:///{tmp_path / 'not-yet.db'}")  # the first run creates it
    assert not (tmp_path / "not-yet.db").exists()


def test_mlflow_own_schema_message_is_named_the_same_way() -> None:
    """PostgreSQL and MySQL stores are checked by MLflow itself; its advice to upgrade a newer
    schema is replaced by check_sqlite's line."""
    from mlflow.exceptions import MlflowException

    uri = "postgresql://host/mlflow"
    exc = MlflowException(
        f"Detected out-of-date database schema (found version {NEWER_REVISION}, but expected "
        f"{schema.mlflow_revisions()[-1]}). Take a backup of your database, then run 'mlflow db "
        "upgrade <database_uri>'"
    )
    assert "written by a newer MLflow" in schema.describe_failure(uri, exc)
    assert schema.describe_failure(uri, MlflowException("boom")) == f"MLflow store {uri}: boom"
