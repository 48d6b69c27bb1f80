"""Stage `train`: fit the model, track the run in MLflow, write the model and training curves."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.cli import params_option, reports_errors
from pipeline.core import paths, train_process
from pipeline.core.params import load_params


@click.command()
@params_option
@reports_errors
def main(params_file: Path) -> None:
    """Train on the fitting split, validate every epoch, keep the best weights.

    Reads seed, data.*, train.* and mlflow.*. With train.processes > 1 this command starts that many
    copies of itself under torchrun's launcher and waits for them.
    """
    params = load_params(params_file)
    outcome = train_process.run_train(
        params,
        ["-m", "pipeline.stages.train", "--params", str(params_file)],
        log=click.echo,
        progress=sys.stderr.isatty(),  # bars for people; plain epoch lines in CI logs
    )
    if outcome is not None:  # the main process; None after a launch and on the other ranks
        best = outcome.state.best
        click.echo(
            f"best val_accuracy {best.val_accuracy:.4f} at epoch {outcome.state.best_epoch} "
            f"({outcome.seconds:.1f}s); MLflow run {outcome.run_id} -> {paths.MODEL}"
        )


if __name__ == "__main__":
    main()
