"""MlflowTracker: the Tracker that records into an MLflow store, in this process."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core import paths
from pipeline.core.errors import PipelineError, first_line
from pipeline.core.tracking import Tracker
from pipeline.core.tracking.provenance import origin_tags, param_value
from pipeline.core.tracking.store import (
    CLIENT_DEFAULTS,
    check_artifact_location,
    check_environment,
    check_reachable,
    run_span,
    sqlite_lock,
    tracking_uri,
)

# MLflow 3 opens an experiment on its GenAI view (traces, prompts) unless told it holds training
# runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
SYSTEM_METRICS_SECONDS = 2

F = TypeVar("F", bound=Callable[..., Any])


def _store_errors(method: F) -> F:
    """Turn a failure of the store (refused request, lost connection, database error) into one
    line."""

    @functools.wraps(method)
    def wrapper(self: MlflowTracker, *args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        from pipeline.core.tracking.schema import describe_failure

        try:
            return method(self, *args, **kwargs)
        except (MlflowException, SQLAlchemyError, OSError) as exc:
            raise PipelineError(describe_failure(self.uri, exc)) from None

    return wrapper  # type: ignore[return-value]


class MlflowTracker(Tracker):
    """Records into the MLflow store at `uri` (default: `tracking_uri()`); checks it answers first.

    mlflow itself (~4 s to import) is loaded when the first run opens, after the stage has read and
    checked its inputs: a mistake there is reported without paying for it.
    """

    def __init__(self, uri: str | None = None) -> None:
        # Decided before set_tracking_uri, which also exports MLFLOW_TRACKING_URI to this process: a
        # queued experiment that creates the experiment must still pin its artifacts at the real
        # root.
        check_environment()
        self.uri = uri or tracking_uri()
        self._default_store = uri is None and "MLFLOW_TRACKING_URI" not in os.environ
        check_reachable(self.uri)  # before any work, not after an hour of training

    @functools.cache  # noqa: B019 (one tracker per process)
    def _connect(self) -> Any:
        """mlflow, imported on first use and pointed at this store."""
        for name, value in CLIENT_DEFAULTS.items():  # also when no check_reachable came first
            os.environ.setdefault(name, value)
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        # A default run lasts well under a minute: MLflow's 10 s would give two or three samples.
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_SECONDS)
        # Its monitor announces starting and stopping at INFO, four lines per stage in every log.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        # Creating a fresh store's tables is announced at INFO too, in the middle of the first run.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        return mlflow

    @_store_errors
    def _experiment_id(self, name: str) -> str:
        """The id of experiment `name`, created if needed. On a SQLite store, creating the database,
        its migrations and the experiment happen under a file lock: parallel first runs (`dvc queue
        start -j 2` on a fresh clone) would otherwise race in the schema migration."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._connect()  # for the fluent calls that follow
        with sqlite_lock(self.uri):
            client = MlflowClient(self.uri)
            exp = client.get_experiment_by_name(name)
            if exp is None:
                # The default store would put artifacts in ./mlruns of whatever folder the stage
                # runs in (a throwaway copy for queued experiments); pin them beside the database
                # instead.
                location = (
                    (paths.project_root() / "mlruns").as_uri() if self._default_store else None
                )
                try:
                    return client.create_experiment(
                        name, artifact_location=location, tags=EXPERIMENT_KIND
                    )
                except MlflowException:
                    exp = client.get_experiment_by_name(
                        name
                    )  # created meanwhile by a run on another machine
                    if exp is None:
                        raise
        if exp.lifecycle_stage == "deleted":
            raise PipelineError(
                f"mlflow.experiment_name: experiment {name!r} is deleted in {self.uri}; restore it "
                "or choose another name"
            )
        check_artifact_location(name, exp.artifact_location)
        for key, value in EXPERIMENT_KIND.items():
            if key not in exp.tags:  # created by an older version of this pipeline, or by hand
                MlflowClient(self.uri).set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id

    @_store_errors
    def open_store(self) -> None:
        """Import mlflow and open an existing store (on SQLite: the engine and its schema check, the
        longest part), so that the first run starts without that wait. A SQLite file that does not
        exist yet is left to the first run: a stage that stops on bad input creates nothing."""
        from mlflow.tracking import MlflowClient

        self._connect()
        if (
            self.uri.startswith("sqlite:///")
            and not Path(self.uri.removeprefix("sqlite:///")).exists()
        ):
            return
        with sqlite_lock(
            self.uri
        ):  # another run may be creating it this moment: see _experiment_id
            MlflowClient(self.uri).search_experiments(max_results=1)

    def ensure_experiment(self, name: str) -> str:
        """The id of experiment `name`, created now if missing. For callers that start runs in other
        folders (a sweep's worker clones): created here, the default store pins its artifacts at
        this project root."""
        return self._experiment_id(name)

    def _start(self, start: Mapping[str, Any], params: Mapping[str, str]) -> str:
        """mlflow.start_run(**start) with system metrics, then log `params`; returns the run id.
        The run stays active until end_run."""
        mlflow = self._connect()
        from mlflow.exceptions import MlflowException

        try:
            # CPU, memory, disk, network (and GPU where pynvml finds one) as system/* metrics.
            run = mlflow.start_run(**start, log_system_metrics=True)
        except MlflowException as exc:
            raise PipelineError(f"MLflow store {self.uri}: {first_line(exc)}") from None
        self._log_params(params)
        return str(run.info.run_id)

    def end_run(self, status: str = "FINISHED") -> None:
        """End the active run (if any) as `status` (FINISHED, FAILED or KILLED), with the last
        system-metrics sample. Raises PipelineError when the store refuses to finish it."""
        mlflow = self._connect()
        active = mlflow.active_run()
        if active is None:
            return
        if status == "FINISHED":
            self._finish(active.info.run_id)
        else:
            _last_system_sample(active.info.run_id)
            mlflow.end_run(status)

    @_store_errors
    def _finish(self, run_id: str) -> None:
        _last_system_sample(run_id)
        self._connect().end_run()

    def train_run(
        self,
        experiment_name: str,
        run_name: str,
        params: Mapping[str, Any],
        resume_run_id: str | None = None,
    ) -> AbstractContextManager[str]:
        return run_span(
            lambda: self.open_train_run(experiment_name, run_name, params, resume_run_id),
            self.end_run,
        )

    def open_train_run(
        self,
        experiment_name: str,
        run_name: str,
        params: Mapping[str, Any],
        resume_run_id: str | None = None,
    ) -> str:
        """Start train_run's run and return its id; it stays active until end_run."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        experiment_id = self._experiment_id(experiment_name)
        wanted = {k: param_value(v) for k, v in params.items()}
        start: dict[str, Any] = {
            "experiment_id": experiment_id,
            "run_name": run_name,
            "tags": origin_tags(params),
        }
        if resume_run_id is not None:
            try:
                old = MlflowClient(self.uri).get_run(resume_run_id)
            except MlflowException:
                old = None  # the store lost it: resume the training, in a new run
            # MLflow parameters are immutable: a checkpoint resumed with other mlflow.* values (the
            # only ones its fingerprint leaves out) continues in a new run that points to the old
            # one.
            if old is not None and all(old.data.params.get(k, v) == v for k, v in wanted.items()):
                start = {"run_id": resume_run_id}
            else:
                start["tags"] = {**start["tags"], "resumed_from_run_id": resume_run_id}
        return self._start(start, wanted)

    @_store_errors
    def _log_params(self, params: Mapping[str, str]) -> None:
        self._connect().log_params(dict(params))

    def evaluate_run(
        self, run_info: Mapping[str, Any], params: Mapping[str, Any]
    ) -> AbstractContextManager[str]:
        """As Tracker.evaluate_run; a new run, tagged with the original id and carrying its
        parameters, is opened instead when the store does not know that run (a fresh store, a clone)
        or when the run was already evaluated with other evaluate.* values (MLflow parameters cannot
        change)."""
        return run_span(lambda: self.open_evaluate_run(run_info, params), self.end_run)

    def open_evaluate_run(self, run_info: Mapping[str, Any], params: Mapping[str, Any]) -> str:
        """Start evaluate_run's run and return its id; it stays active until end_run."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        experiment_id = self._experiment_id(run_info["experiment_name"])
        wanted = {k: param_value(v) for k, v in params.items()}
        try:
            original = MlflowClient(self.uri).get_run(run_info["run_id"])
        except MlflowException:
            original = None
        if original is not None and all(
            original.data.params.get(k, v) == v for k, v in wanted.items()
        ):
            return self._start({"run_id": run_info["run_id"]}, wanted)
        start = {
            "experiment_id": experiment_id,
            "run_name": run_info.get("run_name"),
            "tags": {**origin_tags(params), "original_run_id": run_info["run_id"]},
        }
        inherited = (
            {k: v for k, v in original.data.params.items() if k not in wanted} if original else {}
        )
        return self._start(start, {**inherited, **wanted})

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

        dataset = MetaDataset(
            LocalArtifactDatasetSource(str(Path(source).resolve())), name=name, digest=digest[:36]
        )
        self._connect().log_input(
            dataset, context="training", tags={k: str(v) for k, v in rows.items()}
        )

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
        from pipeline.core.tracking.model import log_pyfunc

        self._connect()
        return log_pyfunc(model_file, name, meta)

    @_store_errors
    def register(self, model_uri: str, name: str, alias: str) -> str:
        from mlflow.tracking import MlflowClient

        version = self._connect().register_model(model_uri, name)
        MlflowClient(self.uri).set_registered_model_alias(name, alias, version.version)
        return str(version.version)


def _last_system_sample(run_id: str) -> None:
    """Record what MLflow's system-metrics monitor sampled since its last report. end_run drops it:
    a run (or an evaluate stage's reopening of one) shorter than SYSTEM_METRICS_SECONDS, as on a
    fast machine, would have no system/* metrics at all. end_run's finish() writes it with the
    rest."""
    from mlflow.tracking.fluent import run_id_to_system_metrics_monitor

    monitor = run_id_to_system_metrics_monitor.get(run_id)
    if monitor is not None:
        with contextlib.suppress(
            Exception
        ):  # as MLflow's own monitor: a lost sample never fails a run
            # The state at the end; averaged with the partial interval's samples.
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
