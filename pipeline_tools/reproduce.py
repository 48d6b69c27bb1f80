"""`python -m pipeline reproduce --run-id ID`: re-create a logged MLflow run and compare its metrics.

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
from pipeline.core.params import flatten, nest, read_yaml, update_yaml
from pipeline.core.repo import git
from pipeline_tools import rerun


def params_from_run(logged: dict[str, str]) -> dict[str, Any]:
    """Nested params.yaml content from MLflow's flat `a.b` → string parameters."""
    nested = nest({key: read_yaml(text) for key, text in logged.items()})
    nested.setdefault("mlflow", {})["register_model"] = None  # re-creating must not publish a model version
    return nested


@click.command()
@click.option("--run-id", required=True, help="The MLflow run to re-create.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-6, show_default=True,
              help="Largest absolute difference accepted between logged and re-created metrics.")
@reports_errors
def main(run_id: str, tolerance: float) -> None:
    """Clone the run's commit, apply its parameters, re-run the pipeline, compare the test metrics."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipeline.core.metrics import mlflow_name
    from pipeline.core.tracking import store

    uri = store.tracking_uri()
    store.check_reachable(uri)
    try:
        run = MlflowClient(uri).get_run(run_id)
    except MlflowException:
        raise PipelineError(f"--run-id: no run {run_id} in {uri}") from None
    commit = run.data.tags.get("git.commit")
    if not commit:
        raise PipelineError(f"run {run_id} has no git.commit tag; it was not logged from a git checkout")
    if run.data.tags.get("git.dirty") == "true":
        click.echo("warning: the run was logged from a work tree with uncommitted changes; they cannot be re-created", err=True)
    root = Path(git("rev-parse", "--show-toplevel", cwd=Path.cwd()))
    tmp = Path(tempfile.mkdtemp(prefix="reproduce-"))
    clone = rerun.clone(root, commit, tmp / "clone")
    update_yaml(clone / paths.PARAMS, params_from_run(run.data.params))
    click.echo(f"re-creating run {run_id} ({run.info.run_name}) at {commit[:12]} in {clone} ...")
    try:
        rerun.run_pipeline(clone, tmp / "dvc-repro.log", click.echo)
        evaluation = flatten(json.loads((clone / paths.EVAL_METRICS).read_text()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a clone with its data: ~130 MB
    rows, mismatched = [], []
    for key, value in sorted(evaluation.items()):
        name = mlflow_name(key)
        logged = run.data.metrics.get(name)
        if logged is None:
            continue
        delta = abs(logged - value)
        if delta > tolerance:
            mismatched.append(name)
        rows.append([name, f"{logged:.6f}", f"{value:.6f}", f"{delta:.2e}", "ok" if delta <= tolerance else "DIFFERENT"])
    if not rows:
        raise PipelineError(f"run {run_id} has no test metrics to compare; was it evaluated?")
    click.echo(rerun.table(rows, ["metric", "logged", "re-created", "|diff|", "status"]))
    if mismatched:
        click.echo(f"NOT REPRODUCED: {len(mismatched)} metric(s) differ by more than {tolerance}", err=True)
        sys.exit(1)
    click.echo(f"reproduced: all {len(rows)} test metrics of run {run_id} match within {tolerance}")


if __name__ == "__main__":
    main()
