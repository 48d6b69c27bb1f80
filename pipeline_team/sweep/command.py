"""`python -m pipeline sweep`: an Optuna study over params.yaml keys, every trial a DVC experiment
and an MLflow run.

Run it in several shells or on several machines with one `--storage` and `--study` and they share
the study; `--workers N` starts N such workers here. See docs/sweeps.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from pipeline.cli import reports_errors
from pipeline.core import paths
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params, parse_params
from pipeline.core.repo import clean_env, git
from pipeline.core.yamlio import read_yaml
from pipeline_team.sweep import space as search_space
from pipeline_team.sweep import study as studies
from pipeline_team.sweep import worker


@click.command()
@click.option(
    "--storage",
    envvar=studies.STORAGE_ENV,
    default=None,
    help=(
        f"Optuna RDB storage URL shared by all workers (env {studies.STORAGE_ENV}; "
        f"default: SQLite {studies.DEFAULT_STORAGE_FILE} at the project root)."
    ),
)
@click.option(
    "--study",
    "study_name",
    default="sweep",
    show_default=True,
    help=(
        "Study name; workers with the same storage and name share it. "
        "Experiments are named <study>-<trial>."
    ),
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Trials to run, per worker.",
)
@click.option(
    "--space",
    "space_file",
    type=click.Path(path_type=Path),
    default=search_space.DEFAULT_SPACE,
    show_default=True,
    help="Search-space file: dotted params.yaml keys with a range or choices, and the pruner.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes to start on this machine (each runs --trials trials).",
)
@click.option("--worker-label", default=None, hidden=True)  # set for the processes --workers starts
@click.option("--no-summary", is_flag=True, hidden=True)
@reports_errors
def main(
    storage: str | None,
    study_name: str,
    trials: int,
    space_file: Path,
    workers: int,
    worker_label: str | None,
    no_summary: bool,
) -> None:
    """Search parameters with Optuna: each trial is `dvc exp run -S …` (see `dvc exp show`) and one
    MLflow run tagged optuna.study and optuna.trial; its objective is the best validation accuracy,
    and the study's pruner may stop it after any epoch. Prints the best trial at the end."""
    # Stopped by `--workers`' parent or a scheduler: end the running trial as FAIL and remove the
    # clone.
    signal.signal(signal.SIGTERM, _interrupt)
    studies.check_study_name(study_name)
    space_file = space_file.resolve()  # before moving to the project root
    root = paths.project_root()
    os.chdir(root)
    base = committed_params()
    space = search_space.load_space(space_file, base)
    url = studies.storage_url(storage, root)
    if worker_label is None:
        warn_uncommitted()
    from pipeline.core.tracking import client, store

    mlflow_uri = store.tracking_uri()
    if worker_label is None:  # (the workers --workers starts leave it to their parent)
        # Created here, at the project root: a trial creating it from its worker clone would leave
        # its artifacts in that clone (the default store pins them beside the database only when it
        # creates).
        client.MlflowTracker(mlflow_uri).ensure_experiment(base.mlflow.experiment_name)
    # Trials log where this command would; the caller's MLflow credentials come along, DVC_* do not.
    mlflow_env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    trial_env = clean_env(**{**mlflow_env, "MLFLOW_TRACKING_URI": mlflow_uri})
    study = studies.open_study(url, study_name, space)
    if workers == 1:
        echo = (lambda line: click.echo(f"[{worker_label}] {line}")) if worker_label else click.echo
        # The clone is named by process, not by label: two sweeps with --workers may share a
        # project.
        worker.run_worker(
            root,
            url,
            study_name,
            space,
            base,
            trials,
            f"{study_name}-{os.getpid()}",
            trial_env,
            echo,
        )
    else:
        start_workers(url, study_name, trials, space_file, workers)
    if not no_summary:
        for line in studies.summary(study):
            click.echo(line)


def committed_params() -> Params:
    """The parameters of HEAD's params.yaml: what every trial starts from (a worker clones HEAD)."""
    text = git("show", f"HEAD:{paths.PARAMS.as_posix()}")
    return parse_params(
        read_yaml(text, f"{paths.PARAMS} at HEAD"), source=f"{paths.PARAMS} at HEAD"
    )


def warn_uncommitted() -> None:
    """Say so when the workspace differs from HEAD: trials run HEAD, like a colleague's clone
    would."""
    outputs = [f":(exclude){p.as_posix()}" for p in paths.NOT_CODE if p != paths.PARAMS]
    changed = git("diff", "--name-only", "HEAD", "--", ".", *outputs, check=False)
    if changed:
        files = ", ".join(changed.splitlines()[:5])
        click.echo(
            f"note: trials run commit {git('rev-parse', '--short', 'HEAD')}; uncommitted changes "
            f"({files}) are not part of them",
            err=True,
        )


def start_workers(url: str, study_name: str, trials: int, space_file: Path, workers: int) -> None:
    """Run `workers` copies of this command, each one worker, and wait for all of them."""
    # The storage URL (with its password) goes by the environment: a command line is visible to
    # `ps`.
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "sweep",
        "--study",
        study_name,
        "--trials",
        str(trials),
        "--space",
        str(space_file),
        "--no-summary",
    ]
    env = {**os.environ, studies.STORAGE_ENV: url}
    procs = [
        subprocess.Popen([*cmd, "--worker-label", f"w{k}"], env=env) for k in range(1, workers + 1)
    ]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    failed = [f"w{k} exited {code}" for k, code in enumerate(codes, start=1) if code != 0]
    if failed:
        raise PipelineError(f"sweep workers failed: {', '.join(failed)}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
