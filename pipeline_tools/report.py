"""`python -m pipeline report`: a Markdown report of the workspace against a baseline revision, for
a pull request.

Metrics and parameters that changed (from `dvc metrics diff` / `dvc params diff`), the per-class
test accuracy side by side, the plots as images, and the MLflow run. CI posts it as a comment
(.github/workflows/report.yml, with CML, which uploads the images the Markdown references).
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

    lines += [
        "## Metrics",
        "",
        f"| file | metric | `{baseline}` | workspace | change |",
        "|---|---|---:|---:|---:|",
    ]
    per_class: dict[str, dict[str, Any]] = {}
    for file, entries in sorted(metrics.items()):
        for key, entry in entries.items():
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

    changed = [(k, e) for entries in params.values() for k, e in sorted(entries.items())]
    lines += ["", "## Parameters changed", ""]
    if changed:
        lines += [f"| parameter | `{baseline}` | workspace |", "|---|---|---|"]
        lines += [f"| {k} | {_raw(e.get('old'))} | {_raw(e.get('new'))} |" for k, e in changed]
    else:
        lines.append("None: the same `params.yaml`.")

    if per_class:
        try:  # the classes in the model's order, not DVC's
            order = list(json.loads(paths.EVAL_METRICS.read_text())["per_class_accuracy"])
        except (OSError, ValueError, KeyError):
            order = []
        per_class = dict(
            sorted(
                per_class.items(),
                key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]),
            )
        )
        lines += [
            "",
            "## Per-class test accuracy",
            "",
            f"| class | `{baseline}` | workspace | change |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {_fmt(c)} | {_fmt(e.get('old'))} | {_fmt(e.get('new'))} | {_change(e)} |"
            for c, e in per_class.items()
        ]

    lines += [
        "",
        "## Plots",
        "",
        "Curves per epoch, confusion matrix, ROC and precision-recall: `dvc plots diff "
        f"{baseline}` draws them with both revisions overlaid.",
        "",
    ]
    lines += [f"![{image.stem}]({image.as_posix()})" for image in IMAGES if image.is_file()]

    try:
        run = json.loads(paths.RUN_FILE.read_text())
    except (OSError, ValueError):
        run = {}
    if run.get("run_id"):
        where = f" on {mlflow_url}" if mlflow_url else ""
        lines += [
            "",
            "## MLflow",
            "",
            f"Run `{run.get('run_name', '')}` (`{run['run_id']}`){where}, "
            f"model `{run.get('model_uri', '')}`.",
        ]
    return "\n".join(lines) + "\n"


@click.command(
    help=(
        "Write Markdown of the workspace's metrics, parameters, per-class accuracy and plots "
        "against a baseline revision (what CI posts on a pull request)."
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
