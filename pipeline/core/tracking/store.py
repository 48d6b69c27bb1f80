"""Which MLflow store a run goes to, and whether it answers: checked in seconds, before any work.

The store is `MLFLOW_TRACKING_URI` when set, else SQLite at the *project root*: `DVC_ROOT` points
there even when a queued experiment runs in a copy under `.dvc/tmp/exps/…`, so `dvc repro`,
`dvc exp run` and queued runs all land in one store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core import paths
from pipeline.core.errors import PipelineError

# Stores MLflow can open; anything else is a typo that MLflow would report with a traceback.
SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql")


# Variables that make MLflow log into a run, experiment or model the pipeline did not choose (a
# leftover of a notebook or a wrapper): the pipeline opens its own runs in mlflow.experiment_name,
# so it refuses them.
FOREIGN_TARGETS = {
    "MLFLOW_RUN_ID": "MLflow would resume that run instead of opening the stage's own",
    "MLFLOW_EXPERIMENT_NAME": "the pipeline logs into mlflow.experiment_name of params.yaml",
    "MLFLOW_EXPERIMENT_ID": "the pipeline logs into mlflow.experiment_name of params.yaml",
    "MLFLOW_ACTIVE_MODEL_ID": "MLflow would link this run's metrics to that model",
    "_MLFLOW_ACTIVE_MODEL_ID": "MLflow would link this run's metrics to that model",
}
# A dead part behind a tracking server (its S3 store, say) must surface in seconds: MLflow's client
# retries a failed request 7 times with backoff (about 5 minutes) and waits 120 s for each answer.
# Set for the pipeline's tracking only; a user's own setting wins.
# Its progress bars for copying a 100 KB model are noise in a stage's or a tool's output.
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def check_environment(environ: dict[str, str] | None = None) -> None:
    """Refuse, in one line naming it, a variable that would make MLflow act on a run the pipeline
    did not open."""
    environ = dict(os.environ) if environ is None else environ
    for name, why in FOREIGN_TARGETS.items():
        if environ.get(name):
            raise PipelineError(
                f"{name} is set ({environ[name][:40]}): {why}; unset it (`unset {name}`)"
            )


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the SQLite store at the project root."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.project_root() / 'mlflow.db'}"
    )


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, unless `uri` is a store MLflow can open and, for a server, an
    MLflow server that answers its API (a silent port, another web server, missing credentials).

    MLflow's own client retries with backoff for minutes; a pipeline should not train for an hour
    and then find out it cannot log. Every command that opens the store passes here first, so this
    also sets CLIENT_DEFAULTS (a variable the user set wins) for the MLflow client used next.
    """
    for name, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else "file"
    if scheme not in SCHEMES:
        raise PipelineError(
            f"MLFLOW_TRACKING_URI={uri}: unknown scheme {scheme!r}; use http(s)://HOST:PORT of an "
            "MLflow server, "
            "sqlite:///PATH, postgresql+psycopg2://… or unset the variable"
        )
    if scheme == "sqlite":
        from pipeline.core.tracking.schema import check_sqlite

        check_sqlite(uri)
    if scheme not in ("http", "https"):
        return
    import base64
    import urllib.error
    import urllib.request

    base = uri.rstrip("/")
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = (
        os.environ.get("MLFLOW_TRACKING_USERNAME"),
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
    )
    if user and password:
        request.add_header(
            "Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        )
    try:
        # A fresh opener reads the proxy settings now; urlopen's global one keeps the first it saw.
        opener = urllib.request.build_opener()
        with opener.open(f"{base}/health", timeout=timeout) as resp:
            resp.read()
        with opener.open(request, timeout=timeout) as resp:
            answer = json.loads(resp.read(1 << 20))
        if not isinstance(answer, dict):
            raise ValueError("not a JSON object")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise PipelineError(
                f"MLFLOW_TRACKING_URI={uri}: the server refused the credentials (HTTP {exc.code}); "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
        raise PipelineError(
            f"MLFLOW_TRACKING_URI={uri}: not an MLflow tracking server (HTTP {exc.code} from its "
            "API)"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(
            f"MLFLOW_TRACKING_URI={uri}: tracking server unreachable ({reason}); start it or unset "
            "the variable"
        ) from None
    except ValueError:
        raise PipelineError(
            f"MLFLOW_TRACKING_URI={uri}: not an MLflow tracking server (its API does not answer "
            "JSON)"
        ) from None


@contextmanager
def sqlite_lock(uri: str) -> Iterator[None]:
    """An exclusive file lock beside a SQLite store's database for the block (nothing for other
    stores)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    lock = db.with_name(db.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """SIGTERM (a kill, a CI timeout) raises KeyboardInterrupt meanwhile, as Ctrl-C does: an open
    run then ends KILLED, not RUNNING."""
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def run_span(open_run: Callable[[], str], end_run: Callable[[str], None]) -> Iterator[str]:
    """The life of one MLflow run: `open_run()` starts it and returns its id, which the block gets;
    `end_run(status)` ends it FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM, never
    leaving it RUNNING. An error opening it ends whatever it started (FAILED).

    A failure to end a failed or killed run is dropped: the store may be what failed, and the
    error that stopped the run is the one to report.
    """
    with interrupts_as_keyboard():
        try:
            yield open_run()
        except BaseException as exc:
            # A second Ctrl-C while ending the run leaves it as it is; the first one is re-raised.
            with contextlib.suppress(Exception, KeyboardInterrupt):
                end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        end_run("FINISHED")


def check_artifact_location(name: str, location: str) -> None:
    """Refuse an experiment whose artifacts would land inside DVC's own folder (.dvc/tmp/exps/… is
    where a queued or --temp experiment runs, and DVC deletes it): its models and figures would be
    lost. MLflow cannot move an experiment's artifact location, so another experiment name is the
    way out."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return  # a server's or a bucket's: not in this folder
    folder = Path(url2pathname(parsed.path)).resolve()
    dvc_dir = (paths.project_root() / ".dvc").resolve()
    if folder.is_relative_to(dvc_dir):
        raise PipelineError(
            f"mlflow.experiment_name: experiment {name!r} keeps its artifacts in {folder}, inside "
            "DVC's temporary "
            "folder, which DVC deletes; choose another mlflow.experiment_name (dvc exp run -S "
            "mlflow.experiment_name=…)"
        )
