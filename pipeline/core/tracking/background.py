"""The MLflow tracker in a process of its own, so that MLflow's cost overlaps the stage's own work.

Importing mlflow (seconds), opening the store, drawing figures and storing artifacts happen in a
child process while the stage imports torch, loads data, trains and evaluates; on two cores that
takes them off the critical path instead of adding them before and after it.

The stage talks to it through the Tracker interface. A call that returns nothing is queued and
the stage goes on; a call that returns something (opening a run, storing the model, registering
it) and `flush` wait for everything queued before them. An error in the tracking process is
raised in the stage at the next waiting call or when the run closes, as the same one-line
PipelineError, and the run ends FAILED (KILLED on Ctrl-C or SIGTERM), as with MlflowTracker.

Run as `python -m pipeline.core.tracking.background URI [MODULE ...]`, it is that child: commands
arrive pickled on stdin, answers leave pickled on the stdout it had (MLflow's own prints go to
stderr).
"""

from __future__ import annotations

import importlib
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.core import paths
from pipeline.core.errors import PipelineError
from pipeline.core.tracking import Tracker
from pipeline.core.tracking.client import MlflowTracker
from pipeline.core.tracking.store import (
    check_environment,
    check_reachable,
    interrupts_as_keyboard,
    tracking_uri,
)

# A waiting command's answer is ("ok", value) or (kind, message) of the first error since the last
# answer.
_ERRORS = {"pipeline": PipelineError, "interrupt": KeyboardInterrupt}


class BackgroundTracker(Tracker):
    """MlflowTracker's records, made by a child process (see the module's docstring)."""

    def __init__(self, uri: str | None = None, prepare: tuple[str, ...] = ()) -> None:
        """Start the tracking process; it imports mlflow, opens the store, then imports the modules
        named in `prepare` (what its later calls need, e.g. matplotlib.pyplot to draw figures)."""
        check_environment()
        self.uri = uri or tracking_uri()
        check_reachable(self.uri)  # here, in seconds, before the stage starts its work
        package_parent = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [package_parent, os.environ.get("PYTHONPATH")])
            ),
        }
        # MLflow's usage telemetry has nowhere to go from a CI runner or an offline machine, and its
        # sender thread would delay the end of every stage; a user can still set the variable to
        # false.
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        env.setdefault(
            "MPLBACKEND", "Agg"
        )  # figures are drawn to files, also when matplotlib is prepared
        # A session of its own: a Ctrl-C meant for the stage reaches the stage, which ends the run
        # KILLED. "" = the default store, which the child works out as MlflowTracker() does. It
        # works at the project root: a SQLite store it creates gets its default artifact folder
        # (experiment 0's, `./mlruns`) there, not in the copy under .dvc/tmp/exps/ where DVC runs a
        # queued experiment. Paths it gets are absolute.
        self._child = subprocess.Popen(
            [sys.executable, "-m", "pipeline.core.tracking.background", uri or "", *prepare],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
            cwd=paths.project_root(),
        )
        # Commands are written by a thread: a large one (a figure's points) must not make the stage
        # wait for the child to read the pipe while it is busy with earlier work.
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, daemon=True, name="tracking-writer")
        self._writer.start()

    def _write(self) -> None:
        stdin = self._child.stdin
        assert stdin is not None
        try:
            while (command := self._outbox.get()) is not None:
                pickle.dump(command, stdin)
                stdin.flush()
        except OSError:
            pass  # the child is gone: the next waiting call reads EOF and says so
        finally:
            try:
                stdin.close()  # EOF: the child ends once its queue is done
            except OSError:
                pass

    def _send(self, *command: Any) -> None:
        self._outbox.put(command)

    def _wait(self) -> Any:
        """The answer to the last waiting command; raises the tracking process's first error."""
        try:
            kind, value = pickle.load(self._child.stdout)  # type: ignore[arg-type]
        except (EOFError, OSError, pickle.UnpicklingError):
            self._died()
        if kind == "ok":
            return value
        raise _ERRORS.get(kind, RuntimeError)(value)

    def _died(self) -> None:
        try:
            code = self._child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        raise PipelineError(
            f"MLflow store {self.uri}: the tracking process ended unexpectedly (exit code {code})"
        )

    def _call(self, method: str, *args: Any, wait: bool = False, **kwargs: Any) -> Any:
        self._send(
            "call", method, args, kwargs, wait
        )  # every command: (kind, name, args, kwargs, wait)
        return self._wait() if wait else None

    def flush(self) -> None:
        """Wait until everything queued is recorded; raises the first error of any of it."""
        self._call("flush", wait=True)

    @contextmanager
    def _run(self, method: str, *args: Any) -> Iterator[str]:
        with interrupts_as_keyboard():
            self._send("open", method, args, {}, True)
            run_id = self._wait()
            try:
                yield run_id
            except BaseException as exc:
                self._send(
                    "close",
                    "interrupt" if isinstance(exc, KeyboardInterrupt) else "error",
                    (),
                    {},
                    True,
                )
                try:
                    self._wait()
                except (PipelineError, RuntimeError, KeyboardInterrupt):
                    pass  # the store may be what failed; the original error is the one to report
                raise
            self._send("close", None, (), {}, True)
            self._wait()

    def train_run(
        self,
        experiment_name: str,
        run_name: str,
        params: Mapping[str, Any],
        resume_run_id: str | None = None,
    ) -> AbstractContextManager[str]:
        return self._run("train_run", experiment_name, run_name, dict(params), resume_run_id)

    def evaluate_run(
        self, run_info: Mapping[str, Any], params: Mapping[str, Any]
    ) -> AbstractContextManager[str]:
        return self._run("evaluate_run", dict(run_info), dict(params))

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
        """End the tracking process (after its queue) and wait for it."""
        self._outbox.put(None)
        self._writer.join()
        self._child.wait()


def serve(uri: str | None, prepare: list[str], commands: BinaryIO, answers: BinaryIO) -> None:
    """The tracking process: get ready while the stage starts, then run each command on an
    MlflowTracker, in order, until stdin closes.

    After an error, queued calls are skipped until a waiting command reports it (as in-process,
    where the error would have stopped the stage at once).
    """
    error: BaseException | None = None
    tracker: MlflowTracker | None = None
    try:
        tracker = MlflowTracker(uri)
        tracker.open_store()  # import mlflow and open the store now, while the stage imports torch
        for module in prepare:
            importlib.import_module(module)
    except BaseException as exc:
        error = exc
    run: AbstractContextManager[str] | None = None

    def answer(value: Any = None) -> None:
        nonlocal error
        if error is None:
            reply: tuple[str, Any] = ("ok", value)
        elif isinstance(error, PipelineError):
            reply = ("pipeline", str(error))
        elif isinstance(error, KeyboardInterrupt):
            reply = ("interrupt", "")
        else:
            reply = ("error", f"{type(error).__name__}: {error}")
        error = None
        pickle.dump(reply, answers)
        answers.flush()

    while True:
        try:
            kind, name, args, kwargs, wait = pickle.load(commands)
        except EOFError:
            # The stage is done, or was killed: a run it left open stays as a kill leaves it. Every
            # record is committed by now; os._exit skips MLflow's exit handlers (nothing to save).
            answers.flush()
            os._exit(0)
        result = None
        if kind == "close":
            if run is not None:
                failure = error or {
                    "interrupt": KeyboardInterrupt(),
                    "error": RuntimeError("the stage failed"),
                }.get(name)
                try:
                    run.__exit__(
                        type(failure) if failure else None, failure, None
                    )  # ends it FINISHED/FAILED/KILLED
                except BaseException as exc:
                    error = error or exc
                run = None
        elif error is None and tracker is not None:
            try:
                if kind == "open":
                    run = getattr(tracker, name)(*args, **kwargs)
                    result = run.__enter__()
                elif name != "flush":
                    result = getattr(tracker, name)(*args, **kwargs)
            except BaseException as exc:
                error = exc
        if wait:
            answer(result)


if __name__ == "__main__":
    # Answers go to the stdout this process was given; anything else printed goes to stderr.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.argv[1] or None, sys.argv[2:], sys.stdin.buffer, answers)
