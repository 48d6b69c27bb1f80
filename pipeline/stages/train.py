"""Stage `train`: fit the model, track the run in MLflow, write the model and training curves."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.cli import params_option, reports_errors
from pipeline.core import paths
from pipeline.core.params import load_params


@click.command()
@params_option
@reports_errors
def main(params_file: Path) -> None:
    """Train on the fitting split, validate every epoch, keep the best weights.

    Reads seed, data.*, train.* and mlflow.*.
    """
    params = load_params(params_file)
    if params.train.portable:
        from pipeline.core import cpu

        cpu.pin()  # before torch loads
    # Imported once the parameters are valid: a typo is reported at once, not after ~4 s of imports.
    from pipeline.core import tracking, trainer

    outcome = trainer.train(
        params, tracking.MlflowTracker(), log=click.echo,
        progress=sys.stderr.isatty(),  # bars for people; plain epoch lines in CI logs
    )
    best = outcome.state.best
    click.echo(
        f"best val_accuracy {best.val_accuracy:.4f} at epoch {outcome.state.best_epoch} "
        f"({outcome.seconds:.1f}s); MLflow run {outcome.run_id} -> {paths.MODEL}"
    )


if __name__ == "__main__":
    main()
