"""`python -m pipeline reproduce --run-id ID`: re-create a logged MLflow run and compare its
metrics.

A run is fully described by its git commit (tag `git.commit`) and its parameters (logged under the
params.yaml keys), so the run's commit is cloned, its parameters are written back into params.yaml,
and the pipeline is run from scratch with a store of its own.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from pipeline.cli import reports_errors
from pipeline.core import paths
from pipeline.core.errors import PipelineError
from pipeline.core.params import flatten, merge, nest
from pipeline.core.repo import git
from pipeline.core.yamlio import file_text, read_yaml, update_yaml
from pipeline_tools import rerun

# MLflow's error codes for a run id that names no run (SQL store; server).
NO_SUCH_RUN = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def params_from_run(client: Any, run: Any, folder: Path) -> dict[str, Any]:
    """The run's parameters as nested params.yaml content: its `params.yaml` artifact (every value
    whole), else the logged parameters. PipelineError (one line) when neither holds them whole."""
    from mlflow.exceptions import MlflowException

    from pipeline.core.tracking.provenance import PARAMS_ARTIFACT, TRUNCATED

    try:
        path = Path(client.download_artifacts(run.info.run_id, PARAMS_ARTIFACT, str(folder)))
        source = f"run {run.info.run_id}: {PARAMS_ARTIFACT}"
        nested = read_yaml(file_text(path, source), source)
    except (MlflowException, OSError):  # a run logged before the artifact existed
        cut = sorted(
            key
            for key, text in run.data.params.items()
            if text.endswith(TRUNCATED) or TRUNCATED + " (" in text
        )
        if cut:
            raise PipelineError(
                f"run {run.info.run_id}: {', '.join(cut)} was cut to MLflow's length limit and the "
                "run "
                f"has no {PARAMS_ARTIFACT} artifact; it cannot be re-created"
            ) from None
        nested = nest(
            {
                key: read_yaml(text, f"run {run.info.run_id}: parameter {key}")
                for key, text in run.data.params.items()
            }
        )
    if not isinstance(nested, dict):
        raise PipelineError(
            f"run {run.info.run_id}: its parameters are not a mapping; it cannot be re-created"
        )
    return merge(
        nested, {"mlflow": {"register_model": None}}
    )  # re-creating must not publish a model version


def compare(
    run: Any, evaluation: dict[str, float], tolerance: float
) -> tuple[list[list[str]], list[str]]:
    """Table rows (metric, logged, re-created, |diff|, status) and the names that differ beyond
    `tolerance`."""
    from pipeline.core.metrics import mlflow_name

    rows, mismatched = [], []
    for key, value in sorted(evaluation.items()):
        name = mlflow_name(key)
        logged = run.data.metrics.get(name)
        if logged is None:
            continue
        delta = abs(logged - value)
        if delta > tolerance:
            mismatched.append(name)
        rows.append(
            [
                name,
                f"{logged:.6f}",
                f"{value:.6f}",
                f"{delta:.2e}",
                "ok" if delta <= tolerance else "DIFFERENT",
            ]
        )
    if not rows:
        raise PipelineError(
            f"run {run.info.run_id} has no test metrics to compare; was it evaluated?"
        )
    return rows, mismatched


@click.command()
@click.option("--run-id", required=True, help="The MLflow run to re-create.")
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=1e-6,
    show_default=True,
    help="Largest absolute difference accepted between logged and re-created metrics.",
)
@reports_errors
def main(run_id: str, tolerance: float) -> None:
    """Clone the run's commit, apply its parameters, re-run the pipeline, compare the test
    metrics."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipeline.core.tracking import schema, store

    uri = store.tracking_uri()
    store.check_reachable(uri)
    client = MlflowClient(uri)
    with schema.store_errors(uri):
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code not in NO_SUCH_RUN:  # the store failed: store_errors names it
                raise
            raise PipelineError(f"--run-id: no run {run_id} in {uri}") from None
    commit = run.data.tags.get("git.commit")
    if not commit:
        raise PipelineError(
            f"run {run_id} has no git.commit tag; it was not logged from a git checkout"
        )
    if run.data.tags.get("git.dirty") == "true":
        click.echo(
            "warning: the run was logged from a work tree with uncommitted changes; they cannot be "
            "re-created",
            err=True,
        )
    root = Path(git("rev-parse", "--show-toplevel", cwd=Path.cwd()))
    tmp = Path(tempfile.mkdtemp(prefix="reproduce-"))
    try:  # whatever happens, the clone (with its data: ~130 MB) goes
        with schema.store_errors(uri):
            values = params_from_run(client, run, tmp)
        clone = rerun.clone(root, commit, tmp / "clone")
        update_yaml(clone / paths.PARAMS, values)
        click.echo(
            f"re-creating run {run_id} ({run.info.run_name}) at {commit[:12]} in {clone} ..."
        )
        rerun.run_pipeline(clone, tmp / "dvc-repro.log", click.echo)
        evaluation = flatten(json.loads((clone / paths.EVAL_METRICS).read_text()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows, mismatched = compare(run, evaluation, tolerance)
    click.echo(rerun.table(rows, ["metric", "logged", "re-created", "|diff|", "status"]))
    if mismatched:
        click.echo(
            f"NOT REPRODUCED: {len(mismatched)} metric(s) differ by more than {tolerance}", err=True
        )
        sys.exit(1)
    click.echo(f"reproduced: all {len(rows)} test metrics of run {run_id} match within {tolerance}")


if __name__ == "__main__":
    main()
