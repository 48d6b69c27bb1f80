"""Experiment tracking: the Tracker interface the workflow talks to; its MLflow implementations live
beside it.

One MLflow run per pipeline execution: train opens it, evaluate reopens it from
`models/mlflow_run.json`. The workflow (core.trainer, core.evaluator) only ever calls a Tracker;
this base class records nothing (an untracked run, for tests and the benchmark),
`client.MlflowTracker` records into an MLflow store in-process and `background.BackgroundTracker`
does the same from a process of its own. This package holds the project's only mlflow imports (with
core.serving).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Tracker:
    """What the workflow reports about a run. This base class records nothing: an untracked run."""

    @contextmanager
    def train_run(
        self,
        experiment_name: str,
        run_name: str,
        params: Mapping[str, Any],
        resume_run_id: str | None = None,
    ) -> Iterator[str]:
        """Open the train stage's run (or reopen the one a resumed checkpoint belongs to), log
        `params`, yield the run id."""
        yield ""

    @contextmanager
    def evaluate_run(self, run_info: Mapping[str, Any], params: Mapping[str, Any]) -> Iterator[str]:
        """Reopen the run that `run_info` (models/mlflow_run.json) names, log `params`, yield its
        id."""
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
        """Store the matplotlib figure `draw(*args)` returns (drawn only where it is stored: an
        untracked run never draws it, a background tracker draws it in its own process)."""

    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        """Store a table given as {column: values}."""

    def log_model(self, model_file: Path, name: str, meta: Mapping[str, Any]) -> str:
        """Store the model saved at `model_file` (with its `meta`: what models.save stored beside
        the weights) under `name`; returns its URI ("" when untracked)."""
        return ""

    def close(self) -> None:
        """Release what the tracker holds (a background tracker's process); the tracker is done
        after."""

    def register(self, model_uri: str, name: str, alias: str) -> str:
        """Register a stored model as a new version of `name` with `alias`; returns the version."""
        return ""
