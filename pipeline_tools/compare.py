"""`python -m pipeline compare`: the MLflow compare-view URL and a terminal table of runs side by
side."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from pipeline.cli import reports_errors
from pipeline.core.errors import PipelineError

KEY_TEST_METRICS = (
    "accuracy",
    "loss",
    "macro_f1",
)  # metrics/eval.json keys, shown under their MLflow names


# MLflow 3.17's UI shows its GenAI pages (traces, token usage) unless the URL asks for the
# model-training ones.
TRAINING_VIEW = "workflowType=machine_learning"


def compare_url(base: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    """The MLflow UI's compare view for these runs."""
    runs = json.dumps(run_ids, separators=(",", ":"))
    exps = json.dumps(sorted(set(experiment_ids)), separators=(",", ":"))
    return f"{base.rstrip('/')}/#/compare-runs?runs={runs}&experiments={exps}&{TRAINING_VIEW}"


def runs_url(base: str, experiment_id: str) -> str:
    """The MLflow UI's table of an experiment's training runs."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?{TRAINING_VIEW}"


def table(runs: list[Any]):  # -> pandas.DataFrame
    """One column per run: the parameters that differ between the runs, then the key and per-class
    metrics."""
    import pandas as pd

    names = [r.info.run_name or r.info.run_id[:8] for r in runs]
    keys = sorted({k for r in runs for k in r.data.params})
    differing = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]
    from pipeline.core.metrics import CLASS_ACCURACY_PREFIX, mlflow_name

    per_class = sorted(
        {k for r in runs for k in r.data.metrics if k.startswith(CLASS_ACCURACY_PREFIX)}
    )
    rows: dict[str, list[Any]] = {
        "run id": [r.info.run_id for r in runs],
        "status": [r.info.status for r in runs],
    }
    rows.update({k: [r.data.params.get(k, "") for r in runs] for k in differing})
    for metric in [*map(mlflow_name, KEY_TEST_METRICS), "best_val_accuracy", *per_class]:
        values = [r.data.metrics.get(metric) for r in runs]
        if any(v is not None for v in values):
            rows[metric] = [f"{v:.4f}" if v is not None else "" for v in values]
    return pd.DataFrame.from_dict(rows, orient="index", columns=names)


@click.command()
@click.option(
    "--last",
    "last",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Compare the N newest runs.",
)
@click.option(
    "--exp",
    "exp_names",
    multiple=True,
    help="A DVC experiment name (repeatable); overrides --last.",
)
@click.option(
    "--experiment-name",
    default=None,
    help="MLflow experiment [default: mlflow.experiment_name in params.yaml].",
)
@click.option(
    "--ui",
    "ui_base",
    default=None,
    help="Base URL of the MLflow UI [default: the tracking server, or http://127.0.0.1:5000].",
)
@reports_errors
def main(
    last: int, exp_names: tuple[str, ...], experiment_name: str | None, ui_base: str | None
) -> None:
    """Print the compare-view URL and a table of the runs' differing parameters and metrics."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from pipeline.core.params import load_params
    from pipeline.core.tracking import schema, store

    experiment_name = experiment_name or load_params().mlflow.experiment_name
    uri = store.tracking_uri()
    store.check_reachable(uri)
    with schema.store_errors(uri):
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment_name)
        if exp is None:
            raise PipelineError(
                f"no MLflow experiment {experiment_name!r} in {uri}; run the pipeline first"
            )
        if exp_names:
            # MLflow's search has no IN for tags; experiments are few, so filter here.
            every = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
            runs = [r for r in every if r.data.tags.get("dvc.exp_name") in exp_names]
            missing = set(exp_names) - {r.data.tags.get("dvc.exp_name") for r in runs}
            if missing:
                raise PipelineError(
                    f"no MLflow run for DVC experiment(s) {', '.join(sorted(missing))} in {uri}"
                )
        else:
            runs = client.search_runs(
                [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=last
            )
    if not runs:
        raise PipelineError(f"no runs in MLflow experiment {experiment_name!r}")
    base = ui_base or (
        uri
        if uri.startswith(("http://", "https://"))
        else os.environ.get("MLFLOW_UI", "http://127.0.0.1:5000")
    )
    click.echo(compare_url(base, [r.info.run_id for r in runs], [exp.experiment_id]))
    click.echo(f"all runs: {runs_url(base, exp.experiment_id)}")
    with pd.option_context(
        "display.max_columns", None, "display.width", 200, "display.max_colwidth", 40
    ):
        click.echo(table(runs).to_string())


if __name__ == "__main__":
    main()
