"""Experiment tracking: the Tracker interface the workflow talks to, and its MLflow implementation.

This is the only module that imports mlflow, and only inside MlflowTracker: an untracked run (the
base Tracker, which records nothing) never pays for the import. One MLflow run per pipeline
execution: train opens it, evaluate reopens it from `models/mlflow_run.json`.

The store is `MLFLOW_TRACKING_URI` when set, else SQLite at the *project root*: `DVC_ROOT` points
there even when a queued experiment runs in a copy under `.dvc/tmp/exps/…`, so `dvc repro`,
`dvc exp run` and queued runs all land in one store.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import re
import signal
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.core import atomic, paths
from pipeline.core.errors import PipelineError, first_line
from pipeline.core.repo import git

RUN_FILE_VERSION = 1
# MLflow 3 opens an experiment on its GenAI view (traces, prompts) unless told it holds training runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
SYSTEM_METRICS_SECONDS = 2
# Stores MLflow can open; anything else is a typo that MLflow would report with a traceback.
SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql")

F = TypeVar("F", bound=Callable[..., Any])


def _store_errors(method: F) -> F:
    """Turn a failure of the store (refused request, lost connection, database error) into one line."""

    @functools.wraps(method)
    def wrapper(self: MlflowTracker, *args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return method(self, *args, **kwargs)
        except (MlflowException, SQLAlchemyError, OSError) as exc:
            raise PipelineError(f"MLflow store {self.uri}: {first_line(exc)}") from None

    return wrapper  # type: ignore[return-value]


class Tracker:
    """What the workflow reports about a run. This base class records nothing: an untracked run."""

    @contextmanager
    def train_run(
        self, experiment_name: str, run_name: str, params: Mapping[str, Any], resume_run_id: str | None = None
    ) -> Iterator[str]:
        """Open the train stage's run (or reopen the one a resumed checkpoint belongs to), log `params`,
        yield the run id."""
        yield ""

    @contextmanager
    def evaluate_run(self, run_info: Mapping[str, Any], params: Mapping[str, Any]) -> Iterator[str]:
        """Reopen the run that `run_info` (models/mlflow_run.json) names, log `params`, yield its id."""
        yield ""

    def flush(self) -> None:
        """Return once everything reported so far is recorded, raising if any of it failed."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics in one request (per-epoch ones with `step` = epoch)."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags."""

    def log_dataset(self, name: str, digest: str, source: Path, rows: Mapping[str, int]) -> None:
        """Record the training data as an input of the run."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store a text artifact."""

    def log_file(self, path: Path) -> None:
        """Store a file as an artifact under its name."""

    def log_figure(self, artifact_file: str, draw: Callable[..., Any], *args: Any) -> None:
        """Store the matplotlib figure `draw(*args)` returns (drawn only where it is stored: an untracked
        run never draws it, a background tracker draws it in its own process)."""

    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        """Store a table given as {column: values}."""

    def log_model(self, model_file: Path, name: str, meta: Mapping[str, Any]) -> str:
        """Store the model saved at `model_file` (with its `meta`: what models.save stored beside the
        weights) under `name`; returns its URI ("" when untracked)."""
        return ""

    def close(self) -> None:
        """Release what the tracker holds (a background tracker's process); the tracker is done after."""

    def register(self, model_uri: str, name: str, alias: str) -> str:
        """Register a stored model as a new version of `name` with `alias`; returns the version."""
        return ""


class MlflowTracker(Tracker):
    """Records into the MLflow store at `uri` (default: `tracking_uri()`); checks it answers first.

    mlflow itself (~4 s to import) is loaded when the first run opens, after the stage has read and
    checked its inputs: a mistake there is reported without paying for it.
    """

    def __init__(self, uri: str | None = None) -> None:
        # Decided before set_tracking_uri, which also exports MLFLOW_TRACKING_URI to this process: a
        # queued experiment that creates the experiment must still pin its artifacts at the real root.
        self.uri = uri or tracking_uri()
        self._default_store = uri is None and "MLFLOW_TRACKING_URI" not in os.environ
        check_reachable(self.uri)  # before any work, not after an hour of training

    @functools.cache  # noqa: B019 (one tracker per process)
    def _connect(self) -> Any:
        """mlflow, imported on first use and pointed at this store."""
        # Its progress bars for copying a 100 KB model are noise in a stage's log (and in CI's).
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        # A default run lasts well under a minute: MLflow's 10 s would give two or three samples.
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_SECONDS)
        # Its monitor announces starting and stopping at INFO, four lines per stage in every log.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        return mlflow

    @_store_errors
    def _experiment_id(self, name: str) -> str:
        """The id of experiment `name`, created if needed. On a SQLite store, creating the database, its
        migrations and the experiment happen under a file lock: parallel first runs (`dvc queue start -j 2`
        on a fresh clone) would otherwise race in the schema migration."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._connect()  # for the fluent calls that follow
        with _sqlite_lock(self.uri):
            client = MlflowClient(self.uri)
            exp = client.get_experiment_by_name(name)
            if exp is None:
                # The default store would put artifacts in ./mlruns of whatever folder the stage runs in
                # (a throwaway copy for queued experiments); pin them beside the database instead.
                location = (paths.project_root() / "mlruns").as_uri() if self._default_store else None
                try:
                    return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
                except MlflowException:
                    exp = client.get_experiment_by_name(name)  # created meanwhile by a run on another machine
                    if exp is None:
                        raise
        if exp.lifecycle_stage == "deleted":
            raise PipelineError(
                f"mlflow.experiment_name: experiment {name!r} is deleted in {self.uri}; restore it or choose another name"
            )
        for key, value in EXPERIMENT_KIND.items():
            if key not in exp.tags:  # created by an older version of this pipeline, or by hand
                MlflowClient(self.uri).set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id

    @_store_errors
    def open_store(self) -> None:
        """Import mlflow and open an existing store (on SQLite: the engine and its schema check, about
        1 s), so that the first run starts without that wait. A SQLite file that does not exist yet is
        left to the first run: a stage that stops on bad input creates nothing."""
        from mlflow.tracking import MlflowClient

        self._connect()
        if self.uri.startswith("sqlite:///") and not Path(self.uri.removeprefix("sqlite:///")).exists():
            return
        with _sqlite_lock(self.uri):  # another run may be creating it this moment: see _experiment_id
            MlflowClient(self.uri).search_experiments(max_results=1)

    def ensure_experiment(self, name: str) -> str:
        """The id of experiment `name`, created now if missing. For callers that start runs in other folders
        (a sweep's worker clones): created here, the default store pins its artifacts at this project root."""
        return self._experiment_id(name)

    @contextmanager
    def _run(self, **start_kwargs: Any) -> Iterator[Any]:
        """mlflow.start_run that ends KILLED on Ctrl-C or SIGTERM, FAILED on an error, never RUNNING."""
        mlflow = self._connect()
        from mlflow.entities import RunStatus
        from mlflow.exceptions import MlflowException

        with interrupts_as_keyboard():
            try:
                # CPU, memory, disk, network (and GPU where pynvml finds one) as system/* metrics.
                run = mlflow.start_run(**start_kwargs, log_system_metrics=True)
            except MlflowException as exc:
                raise PipelineError(f"MLflow store {self.uri}: {first_line(exc)}") from None
            try:
                yield run
            except BaseException as exc:
                status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
                try:
                    _last_system_sample(run.info.run_id)
                    mlflow.end_run(RunStatus.to_string(status))
                except Exception:  # the store may be what failed; the original error is the one to report
                    pass
                raise
            else:
                self._end_run()

    @_store_errors
    def _end_run(self) -> None:
        mlflow = self._connect()
        _last_system_sample(mlflow.active_run().info.run_id)
        mlflow.end_run()

    @contextmanager
    def train_run(
        self, experiment_name: str, run_name: str, params: Mapping[str, Any], resume_run_id: str | None = None
    ) -> Iterator[str]:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        experiment_id = self._experiment_id(experiment_name)
        wanted = {k: param_value(v) for k, v in params.items()}
        start: dict[str, Any] = {"experiment_id": experiment_id, "run_name": run_name, "tags": origin_tags(params)}
        if resume_run_id is not None:
            try:
                old = MlflowClient(self.uri).get_run(resume_run_id)
            except MlflowException:
                old = None  # the store lost it: resume the training, in a new run
            # MLflow parameters are immutable: a checkpoint resumed with other mlflow.* values (the
            # only ones its fingerprint leaves out) continues in a new run that points to the old one.
            if old is not None and all(old.data.params.get(k, v) == v for k, v in wanted.items()):
                start = {"run_id": resume_run_id}
            else:
                start["tags"] = {**start["tags"], "resumed_from_run_id": resume_run_id}
        with self._run(**start) as run:
            self._log_params(wanted)
            yield run.info.run_id

    @_store_errors
    def _log_params(self, params: Mapping[str, str]) -> None:
        self._connect().log_params(dict(params))

    @contextmanager
    def evaluate_run(self, run_info: Mapping[str, Any], params: Mapping[str, Any]) -> Iterator[str]:
        """As Tracker.evaluate_run; a new run, tagged with the original id and carrying its parameters, is
        opened instead when the store does not know that run (a fresh store, a clone) or when the run was
        already evaluated with other evaluate.* values (MLflow parameters cannot change)."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        experiment_id = self._experiment_id(run_info["experiment_name"])
        wanted = {k: param_value(v) for k, v in params.items()}
        try:
            original = MlflowClient(self.uri).get_run(run_info["run_id"])
        except MlflowException:
            original = None
        if original is not None and all(original.data.params.get(k, v) == v for k, v in wanted.items()):
            start: dict[str, Any] = {"run_id": run_info["run_id"]}
            inherited: dict[str, str] = {}
        else:
            start = {
                "experiment_id": experiment_id,
                "run_name": run_info.get("run_name"),
                "tags": {**origin_tags(params), "original_run_id": run_info["run_id"]},
            }
            inherited = {k: v for k, v in original.data.params.items() if k not in wanted} if original else {}
        with self._run(**start) as run:
            self._log_params({**inherited, **wanted})
            yield run.info.run_id

    @_store_errors
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._connect().log_metrics(dict(metrics), step=step)

    @_store_errors
    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._connect().set_tags(dict(tags))

    @_store_errors
    def log_dataset(self, name: str, digest: str, source: Path, rows: Mapping[str, int]) -> None:
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource

        dataset = MetaDataset(LocalArtifactDatasetSource(str(Path(source).resolve())), name=name, digest=digest[:36])
        self._connect().log_input(dataset, context="training", tags={k: str(v) for k, v in rows.items()})

    @_store_errors
    def log_text(self, text: str, artifact_file: str) -> None:
        self._connect().log_text(text, artifact_file)

    @_store_errors
    def log_file(self, path: Path) -> None:
        self._connect().log_artifact(str(path))

    @_store_errors
    def log_figure(self, artifact_file: str, draw: Callable[..., Any], *args: Any) -> None:
        import matplotlib.pyplot as plt

        figure = draw(*args)
        self._connect().log_figure(figure, artifact_file)
        plt.close(figure)

    @_store_errors
    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        import pandas as pd

        self._connect().log_table(pd.DataFrame(dict(columns)), artifact_file=artifact_file)

    @_store_errors
    def log_model(self, model_file: Path, name: str, meta: Mapping[str, Any]) -> str:
        """Log `model_file` (models/model.pt) as a pyfunc model named `name` (see core.serving), with this
        package as its code; returns its URI. torch is not imported here: a background tracker's process
        would pay 3 s for it.

        Named after the run (MLflow forbids `/:.%"'` in model names: `_` instead), so its model lists say
        which run each model came from. No input example: MLflow would load and run the model once more
        at logging time only to re-check what the tests check.
        """
        import numpy as np
        from mlflow.models import ModelSignature
        from mlflow.pyfunc import log_model
        from mlflow.types import Schema, TensorSpec

        from pipeline.core import serving  # numpy and mlflow only: torch waits until a model is loaded

        c, s = meta["in_channels"], meta["image_size"]
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(object), (-1,))]),  # untyped on purpose: see core.serving
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(meta["class_names"])))]),
        )
        with warnings.catch_warnings(), _without_mismatch_check():
            warnings.filterwarnings("ignore", message=".*input example was not provided")  # left out on purpose
            info = log_model(
                name=re.sub(r"[/:.%\"']", "_", name),
                python_model=serving.__file__,
                artifacts={"model": str(model_file)},
                code_paths=[str(Path(serving.__file__).parents[1])],
                signature=signature,
                metadata={
                    "input": f"images (N, {c}, {s}, {s}), pixels as integers 0-255 or floats in [0, 1]",
                    "output": "one row of logits per image, columns in class_names order",
                    "class_names": list(meta["class_names"]),
                    "dataset": meta["dataset"],
                },
                pip_requirements=[f"{d}=={version(d)}" for d in ("torch", "mlflow", "numpy", "PyYAML")],
            )
        return info.model_uri

    @_store_errors
    def register(self, model_uri: str, name: str, alias: str) -> str:
        from mlflow.tracking import MlflowClient

        version = self._connect().register_model(model_uri, name)
        MlflowClient(self.uri).set_registered_model_alias(name, alias, version.version)
        return str(version.version)


def _last_system_sample(run_id: str) -> None:
    """Record what MLflow's system-metrics monitor sampled since its last report. end_run drops it: a
    run (or an evaluate stage's reopening of one) shorter than SYSTEM_METRICS_SECONDS, as on a fast
    machine, would have no system/* metrics at all. end_run's finish() writes it with the rest."""
    from mlflow.tracking.fluent import run_id_to_system_metrics_monitor

    monitor = run_id_to_system_metrics_monitor.get(run_id)
    if monitor is not None:
        with contextlib.suppress(Exception):  # as MLflow's own monitor: a lost sample never fails a run
            monitor.collect_metrics()  # the state at the end; averaged with the partial interval's samples
            monitor.publish_metrics(monitor.aggregate_metrics())


@contextmanager
def _without_mismatch_check() -> Iterator[None]:
    """MLflow's check that this environment satisfies the model's requirements, switched off for a
    `log_model` whose pins are read from this very environment (it cannot find a mismatch). It maps
    every installed distribution to its modules first: 1 s of each train run. MLflow has no switch
    for it, so its module-level function is swapped for the call and put back after."""
    from mlflow.utils import environment

    check = environment.warn_dependency_requirement_mismatches
    environment.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = check


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the SQLite store at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.project_root() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, unless `uri` is a store MLflow can open and, for a server, an
    MLflow server that answers its API (a silent port, another web server, missing credentials).

    MLflow's own client retries with backoff for minutes; a pipeline should not train for an hour
    and then find out it cannot log.
    """
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else "file"
    if scheme not in SCHEMES:
        raise PipelineError(
            f"MLFLOW_TRACKING_URI={uri}: unknown scheme {scheme!r}; use http(s)://HOST:PORT of an MLflow server, "
            "sqlite:///PATH, postgresql+psycopg2://… or unset the variable"
        )
    if scheme not in ("http", "https"):
        return
    import base64
    import urllib.error
    import urllib.request

    base = uri.rstrip("/")
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
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
        raise PipelineError(f"MLFLOW_TRACKING_URI={uri}: not an MLflow tracking server (HTTP {exc.code} from its API)") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(
            f"MLFLOW_TRACKING_URI={uri}: tracking server unreachable ({reason}); start it or unset the variable"
        ) from None
    except ValueError:
        raise PipelineError(f"MLFLOW_TRACKING_URI={uri}: not an MLflow tracking server (its API does not answer JSON)") from None


@contextmanager
def _sqlite_lock(uri: str) -> Iterator[None]:
    """An exclusive file lock beside a SQLite store's database for the block (nothing for other stores)."""
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


def origin_tags(params: Mapping[str, Any]) -> dict[str, str]:
    """Tags that tie a run to its code, its parameters and its DVC experiment.

    `git.commit` is the commit the code came from: for a DVC experiment its baseline (a queued one
    runs on a temporary commit of DVC's). `git.dirty` says whether the code differs from it; the
    parameters and the pipeline's outputs do not count, since DVC itself rewrites them during a plain
    run (dvc.lock, metrics, `-S` values). `params.changed` lists the parameters (of `params`) whose
    value differs from that commit's params.yaml.
    """
    tags: dict[str, str] = {}
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    commit = os.environ.get("DVC_EXP_BASELINE_REV") or git("rev-parse", "HEAD", check=False)
    if not commit:
        return tags
    tags["mlflow.source.git.commit"] = tags["git.commit"] = commit
    not_code = [f":(exclude){p.as_posix()}" for p in paths.NOT_CODE]
    edited = git("diff", "--name-only", commit, "--", ".", *not_code, check=False)
    new = git("ls-files", "--others", "--exclude-standard", "--", "pipeline", check=False)
    tags["git.dirty"] = str(bool(edited or new)).lower()
    changed = changed_params(git("show", f"{commit}:{paths.PARAMS.as_posix()}", check=False), params)
    if changed:
        tags["params.changed"] = ", ".join(f"{k}={v}" for k, v in changed.items())[:5000]
    return tags


def changed_params(committed_yaml: str, params: Mapping[str, Any]) -> dict[str, str]:
    """The entries of `params` (dotted keys) whose value differs from those of the params.yaml text
    `committed_yaml` (compared once both are validated, so `lr: 1` and `lr: 1.0` are the same)."""
    from pipeline.core.params import flatten, parse_params, read_yaml

    try:
        committed = {k: param_value(v) for k, v in flatten(parse_params(read_yaml(committed_yaml))).items()}
    except (PipelineError, yaml.YAMLError):
        committed = {}
    current = {k: param_value(v) for k, v in params.items()}
    return {k: v for k, v in current.items() if committed.get(k) != v}


def param_value(value: Any) -> str:
    """A parameter as MLflow should show it: YAML spelling for null and booleans."""
    if value is None or isinstance(value, (bool, tuple)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def write_run_file(path: Path, run_id: str, experiment_name: str, run_name: str, model_uri: str) -> None:
    """Record the run id so that evaluate appends to the same run, and the logged model's URI (what
    `mlflow models serve -m` takes)."""
    atomic.write_json(
        path,
        {"version": RUN_FILE_VERSION, "run_id": run_id, "experiment_name": experiment_name, "run_name": run_name,
         "model_uri": model_uri},
    )


def read_run_file(path: Path) -> dict[str, Any]:
    """Read models/mlflow_run.json."""
    path = Path(path)
    bad = f"{path}: not a run file written by the train stage; rerun train (dvc repro -f train)"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run the train stage first") from None
    except (ValueError, UnicodeDecodeError):
        raise PipelineError(bad) from None
    if not isinstance(info, dict) or not isinstance(info.get("run_id"), str):
        raise PipelineError(bad)
    if not isinstance(info.get("experiment_name"), str) or not info["experiment_name"].strip():
        raise PipelineError(f"{path}: no experiment name; rerun train (dvc repro -f train)")
    return info


def package_versions() -> str:
    """`pip freeze`-style list of the installed distributions (read from metadata, no subprocess).

    Only each METADATA file's Name and Version headers are read: parsing whole files as email
    messages (`Distribution.metadata`) took 0.4 s of every train run.
    """
    from importlib.metadata import distributions

    pins = set()
    for dist in distributions():
        headers = {}
        for line in (dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "").splitlines():
            if not line:  # the headers end at the first blank line
                break
            key, _, value = line.partition(":")
            headers.setdefault(key, value.strip())
        if headers.get("Name"):
            pins.add(f"{headers['Name']}=={headers.get('Version')}")
    return "\n".join(sorted(pins, key=str.lower)) + "\n"


def dvc_lock_tags(lock_file: Path = Path("dvc.lock")) -> dict[str, str]:
    """The content hashes DVC recorded for the data, the statistics and the model, as run tags."""
    try:
        stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return {}
    tags = {}
    for stage, out in (("download", paths.RAW), ("normalization-stats", paths.STATS), ("train", paths.MODEL)):
        for entry in stages.get(stage, {}).get("outs", []):
            if entry.get("path") == out.as_posix() and entry.get("md5"):
                tags[f"dvc.lock.{out.as_posix()}"] = entry["md5"]
    return tags


@contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """SIGTERM (a kill, a CI timeout) raises KeyboardInterrupt meanwhile, as Ctrl-C does: an open run
    then ends KILLED, not RUNNING."""
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
