"""`python -m pipeline report`: a Markdown report of the workspace against a baseline revision, for
a pull request.

Metrics and parameters that changed (from `dvc metrics diff` / `dvc params diff`), the per-class
test accuracy side by side, the pictures changed per class with what that did to each class's
accuracy (pipeline_tools.data_changes), the plots as images, and the MLflow run. CI posts it as a
comment (.github/workflows/report.yml, with CML, which uploads the images the Markdown
references).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import click

from pipeline.cli import reports_errors
from pipeline.core import paths
from pipeline.core.errors import PipelineError
from pipeline.core.repo import clean_env, executable, git

PER_CLASS = "per_class_accuracy."
IMAGES = (paths.TEST_SAMPLES_PLOT, paths.TRAIN_SAMPLES_PLOT)


def dvc_json(*args: str) -> dict[str, Any]:
    """`dvc ARGS --json` parsed; a DVC failure becomes one line."""
    proc = subprocess.run(
        [executable("dvc"), *args, "--json"], capture_output=True, text=True, env=clean_env()
    )
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise PipelineError(
            f"dvc {' '.join(args)}: {lines[-1] if lines else f'exit {proc.returncode}'}"
        )
    return json.loads(proc.stdout or "{}")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def _raw(value: Any) -> str:
    return "–" if value is None else str(value).replace("|", "\\|")


def _change(entry: dict[str, Any]) -> str:
    diff = entry.get("diff")
    return f"{diff:+.4f}" if isinstance(diff, (int, float)) and not isinstance(diff, bool) else ""


def build(baseline: str, mlflow_url: str | None = None) -> str:
    """The report's Markdown: the workspace's results against `baseline` (a git revision)."""
    if not git("rev-parse", "--verify", "--quiet", f"{baseline}^{{commit}}", check=False):
        raise PipelineError(f"--baseline: {baseline!r} is not a revision of this repository")
    metrics = dvc_json("metrics", "diff", baseline, "--all")
    params = dvc_json("params", "diff", baseline)
    lines = [f"# Experiment report: workspace against `{baseline}`", ""]
    metric_lines, per_class = metrics_section(metrics, baseline)
    lines += metric_lines + params_section(params, baseline)
    if per_class:
        per_class = in_model_order(per_class)
        lines += per_class_section(per_class, baseline)
    lines += data_section(baseline, per_class)
    lines += [
        "",
        "## Plots",
        "",
        "Curves per epoch, confusion matrix, ROC and precision-recall: `dvc plots diff "
        f"{baseline}` draws them with both revisions overlaid.",
        "",
    ]
    lines += [f"![{image.stem}]({image.as_posix()})" for image in IMAGES if image.is_file()]
    return "\n".join(lines + mlflow_section(mlflow_url)) + "\n"


# The metrics a reader looks for first, in this order; then the other whole-set ones, then each
# class's (per_class_f1.3), each group by name. DVC lists them by name alone.
HEADLINE = ("accuracy", "balanced_accuracy", "loss", "macro_f1", "best_val_accuracy")


def metric_order(key: str) -> tuple[int, int, str]:
    """Sort key of a metric's name in the report's table."""
    first = HEADLINE.index(key) if key in HEADLINE else len(HEADLINE)
    return key.count("."), first, key


def metrics_section(
    metrics: dict[str, Any], baseline: str
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(the metrics table's lines, the per-class accuracy entries of `dvc metrics diff`)."""
    lines = [
        "## Metrics",
        "",
        f"| file | metric | `{baseline}` | workspace | change |",
        "|---|---|---:|---:|---:|",
    ]
    per_class: dict[str, dict[str, Any]] = {}
    for file, entries in sorted(metrics.items()):
        for key, entry in sorted(entries.items(), key=lambda item: metric_order(item[0])):
            if key.startswith(PER_CLASS):
                per_class[key.removeprefix(PER_CLASS)] = entry
            elif entry.get("old") != entry.get("new") or key in (
                "accuracy",
                "loss",
                "best_val_accuracy",
            ):
                lines.append(
                    f"| {file} | {key} | {_fmt(entry.get('old'))} | {_fmt(entry.get('new'))} | "
                    f"{_change(entry)} |"
                )
    return lines, per_class


def params_section(params: dict[str, Any], baseline: str) -> list[str]:
    """The parameters that changed, as a table."""
    changed = [(k, e) for entries in params.values() for k, e in sorted(entries.items())]
    lines = ["", "## Parameters changed", ""]
    if not changed:
        return [*lines, "None: the same `params.yaml`."]
    lines += [f"| parameter | `{baseline}` | workspace |", "|---|---|---|"]
    return lines + [f"| {k} | {_raw(e.get('old'))} | {_raw(e.get('new'))} |" for k, e in changed]


def in_model_order(per_class: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The per-class entries in the model's class order (metrics/eval.json's), not DVC's."""
    try:
        order = list(json.loads(paths.EVAL_METRICS.read_text())["per_class_accuracy"])
    except (OSError, ValueError, KeyError):
        order = []
    return dict(
        sorted(
            per_class.items(),
            key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]),
        )
    )


def per_class_section(per_class: dict[str, dict[str, Any]], baseline: str) -> list[str]:
    """The per-class test accuracy side by side."""
    return [
        "",
        "## Per-class test accuracy",
        "",
        f"| class | `{baseline}` | workspace | change |",
        "|---|---:|---:|---:|",
    ] + [
        f"| {_fmt(c)} | {_fmt(e.get('old'))} | {_fmt(e.get('new'))} | {_change(e)} |"
        for c, e in per_class.items()
    ]


def data_section(baseline: str, per_class: dict[str, dict[str, Any]]) -> list[str]:
    """Pictures changed per class between the two revisions' data (pipeline_tools.data_changes)."""
    from pipeline.core.params import load_params
    from pipeline_tools import data_changes

    try:
        folder = load_params(paths.project_root() / paths.PARAMS).data.folder
    except PipelineError:
        folder = ""
    return data_changes.section(baseline, folder, per_class)


def mlflow_section(mlflow_url: str | None) -> list[str]:
    """The MLflow run the workspace's model came from, if the run file names one."""
    try:
        run = json.loads(paths.RUN_FILE.read_text())
    except (OSError, ValueError):
        return []
    if not run.get("run_id"):
        return []
    where = f" on {mlflow_url}" if mlflow_url else ""
    return [
        "",
        "## MLflow",
        "",
        f"Run `{run.get('run_name', '')}` (`{run['run_id']}`){where}, "
        f"model `{run.get('model_uri', '')}`.",
    ]


@click.command(
    help=(
        "Write Markdown of the workspace's metrics, parameters, per-class accuracy, pictures "
        "changed per class and plots against a baseline revision (what CI posts on a pull "
        "request)."
    )
)
@click.option(
    "--baseline",
    default="HEAD",
    show_default=True,
    help="Git revision (commit, branch, tag) to compare with.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the Markdown here (default: print it).",
)
@click.option("--mlflow-url", default=None, help="Tracking server URL to name in the report.")
@reports_errors
def main(baseline: str, output: Path | None, mlflow_url: str | None) -> None:
    executable("git")  # named here when missing: build's check would call --baseline unknown
    text = build(baseline, mlflow_url)
    if output is None:
        click.echo(text, nl=False)
        return
    from pipeline.core import atomic

    atomic.write_text(output, text)
    click.echo(f"report: {output}")
