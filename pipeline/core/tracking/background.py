"""The MLflow tracker in a process of its own, so that MLflow's cost overlaps the stage's own work.

Importing mlflow (seconds), opening the store, drawing figures and storing artifacts happen in a
tracking process (the one worker of a ProcessPoolExecutor) while the stage imports torch, loads
data, trains and evaluates; on two cores that takes them off the critical path instead of adding
them before and after it.

The stage talks to it through the Tracker interface. Each call is submitted to the worker, which
runs them in order on an MlflowTracker. A call that returns nothing does not wait; a call that
returns something (opening a run, storing the model, registering it) and `flush` wait for
everything submitted before them and raise the first error of any of it, as the same one-line
PipelineError. After a failed call the worker skips the calls queued behind it until the stage has
waited (in-process the error would have stopped the stage at once), and the run ends FAILED
(KILLED on Ctrl-C or SIGTERM), as with MlflowTracker.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NoReturn

from pipeline.core import paths, scratch
from pipeline.core.errors import PipelineError
from pipeline.core.tracking import Tracker
from pipeline.core.tracking.client import MlflowTracker
from pipeline.core.tracking.store import (
    check_environment,
    check_reachable,
    run_span,
    tracking_uri,
)


class BackgroundTracker(Tracker):
    """MlflowTracker's records, made by a tracking process (see the module's docstring).

    `process` is that process (a multiprocessing process; None if the pool started none).
    """

    def __init__(self, uri: str | None = None, prepare: tuple[str, ...] = ()) -> None:
        """Start the tracking process; it imports mlflow, opens the store, then imports the modules
        named in `prepare` (what its later calls need, e.g. matplotlib.pyplot to draw figures)."""
        check_environment()
        self.uri = uri or tracking_uri()
        check_reachable(self.uri)  # here, in seconds, before the stage starts its work
        # Forked: the stages start it first thing, before torch and its threads, so the copy is
        # small and holds no lock. A spawned worker would start a fresh interpreter, import the
        # stage's main module once more and tear all of mlflow down at the end; a forked one ends
        # with os._exit, and the stage waits for that end.
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_settle,
            initargs=(str(paths.project_root()),),
        )
        self._pending: list[Future[Any]] = []
        before = set(multiprocessing.active_children())
        # "" = None: the default store, which the worker works out as MlflowTracker() does.
        self._submit(_open, uri, tuple(prepare))
        # The pool starts its process on the first submit: kept to report its exit code.
        self.process = next(iter(set(multiprocessing.active_children()) - before), None)

    def _submit(self, function: Callable[..., Any], *args: Any) -> None:
        try:
            self._pending.append(self._pool.submit(function, *args))
        except BrokenProcessPool:
            self._died()

    def _wait(self) -> Any:
        """The last submitted call's result once every call before it is done; raises the first
        error of any of them."""
        pending, self._pending = self._pending, []
        result = None
        try:
            for future in pending:
                result = future.result()
        except BrokenProcessPool:
            self._died()
        return result

    def _died(self) -> NoReturn:
        self._pool.shutdown(wait=True)  # its process reaped: the exit code is known
        code = self.process.exitcode if self.process is not None else None
        raise PipelineError(
            f"MLflow store {self.uri}: the tracking process ended unexpectedly (exit code {code})"
        ) from None

    def _call(self, method: str, *args: Any, wait: bool = False) -> Any:
        self._submit(_record, method, args, wait)
        return self._wait() if wait else None

    def _end_run(self, status: str) -> None:
        self._submit(_end_run, status)
        self._wait()

    def flush(self) -> None:
        """Wait until everything submitted is recorded; raises the first error of any of it."""
        self._call("flush", wait=True)

    def train_run(
        self,
        experiment_name: str,
        run_name: str,
        params: Mapping[str, Any],
        resume_run_id: str | None = None,
    ) -> AbstractContextManager[str]:
        args = (experiment_name, run_name, dict(params), resume_run_id)
        return run_span(lambda: self._call("open_train_run", *args, wait=True), self._end_run)

    def evaluate_run(
        self, run_info: Mapping[str, Any], params: Mapping[str, Any]
    ) -> AbstractContextManager[str]:
        args = (dict(run_info), dict(params))
        return run_span(lambda: self._call("open_evaluate_run", *args, wait=True), self._end_run)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._call("log_metrics", dict(metrics), step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._call("set_tags", dict(tags))

    def log_dataset(self, name: str, digest: str, source: Path, rows: Mapping[str, int]) -> None:
        self._call("log_dataset", name, digest, Path(source).resolve(), dict(rows))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text", text, artifact_file)

    def log_file(self, path: Path) -> None:
        self._call("log_file", Path(path).resolve())

    def log_figure(self, artifact_file: str, draw: Any, *args: Any) -> None:
        self._call("log_figure", artifact_file, draw, *args)

    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        self._call("log_table", dict(columns), artifact_file)

    def log_model(self, model_file: Path, name: str, meta: Mapping[str, Any]) -> str:
        return str(self._call("log_model", Path(model_file).resolve(), name, dict(meta), wait=True))

    def register(self, model_uri: str, name: str, alias: str) -> str:
        return str(self._call("register", model_uri, name, alias, wait=True))

    def close(self) -> None:
        """Let the tracking process finish what was submitted, then end it and wait for it."""
        self._pool.shutdown(wait=True)


# What follows runs in the tracking process: its tracker, and the first call that failed since the
# stage last waited.
_tracker: MlflowTracker | None = None
_failed: BaseException | None = None
_tmp: Path | None = None  # its temporary folder: MLflow's model folders, removed at its end


def _settle(root: str) -> None:
    """Make the new tracking process independent of the stage's terminal and folder."""
    global _tmp
    # A session of its own: a Ctrl-C meant for the stage reaches the stage, which ends the run
    # KILLED through this process.
    os.setsid()
    # At the project root: a SQLite store it creates gets its default artifact folder (experiment
    # 0's, `./mlruns`) there, not in the copy under .dvc/tmp/exps/ where DVC runs a queued
    # experiment. Paths it gets are absolute.
    os.chdir(root)
    os.dup2(2, 1)  # the stage's stdout is its own report: whatever MLflow prints goes to stderr
    # MLflow's usage telemetry has nowhere to go from a CI runner or an offline machine, and its
    # sender thread would delay the end of every stage; a user can still set the variable to false.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures are drawn to files
    # log_model saves the model into a temporary folder before storing it; should the process end
    # in the middle (os._exit below), that folder would stay in /tmp.
    _tmp = scratch.process_tmpdir("mlflow-tracking-")
    threading.Thread(target=_exit_with_parent, daemon=True, name="parent-watch").start()


def _exit_with_parent() -> None:
    """End this process when the stage's process is gone (killed: it could not shut the pool down).
    A run it left open stays as a kill leaves it: os._exit skips MLflow's exit handler, which would
    end it FINISHED."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        if _tmp is not None:
            scratch.remove(_tmp)  # os._exit skips multiprocessing's finalizers
        os._exit(0)


def _open(uri: str | None, prepare: tuple[str, ...]) -> None:
    """The first call: import mlflow and open the store while the stage imports torch, then import
    the modules the later calls need."""
    global _tracker, _failed
    try:
        _tracker = MlflowTracker(uri)
        _tracker.open_store()
        for module in prepare:
            importlib.import_module(module)
    except BaseException as exc:
        _failed = exc
        raise


def _record(method: str, args: tuple[Any, ...], waited: bool) -> Any:
    """`_tracker.method(*args)`, or the earlier failure again (a waited call clears it: the stage
    has heard of it by then)."""
    global _failed
    try:
        if _failed is not None:
            raise _failed
        assert _tracker is not None  # set by _open, or _open failed
        return getattr(_tracker, method)(*args)
    except BaseException as exc:
        _failed = _failed or exc
        raise
    finally:
        if waited:
            _failed = None


def _end_run(status: str) -> None:
    """End the open run as `status`, FAILED if a call failed since the stage last waited."""
    global _failed
    failed, _failed = _failed, None
    if _tracker is not None:
        _tracker.end_run("FAILED" if failed is not None and status == "FINISHED" else status)
