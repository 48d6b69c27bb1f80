"""Stage `train`: fit the model, track the run in MLflow, write the model and training curves."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pipeline.cli import params_option, reports_errors
from pipeline.core import paths, trial
from pipeline.core.params import load_params

if TYPE_CHECKING:
    from pipeline.core.loop import EpochResult


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
    link = trial.link_from_env()  # set when `python -m pipeline sweep` runs this as an Optuna trial
    # Imported once the parameters are valid: a typo is reported at once, not after ~4 s of imports.
    from pipeline.core import tracking, trainer

    tracker = tracking.MlflowTracker()
    reporter = trial.TrialReporter(link) if link else None

    def on_epoch(result: EpochResult) -> bool:
        # A pruned trial ends like an early stop: outputs written, run FINISHED, tagged pruned.
        if reporter is None or not reporter.report(result.epoch, result.val_accuracy):
            return False
        tracker.set_tags({trial.PRUNED_TAG: "true"})
        click.echo(f"pruned: trial {link.number} of study {link.study} stops after epoch {result.epoch}")
        return True

    outcome = trainer.train(
        params, tracker, log=click.echo, on_epoch=on_epoch,
        progress=sys.stderr.isatty(),  # bars for people; plain epoch lines in CI logs
        tags=link.tags() if link else None,
    )
    best = outcome.state.best
    click.echo(
        f"best val_accuracy {best.val_accuracy:.4f} at epoch {outcome.state.best_epoch} "
        f"({outcome.seconds:.1f}s); MLflow run {outcome.run_id} -> {paths.MODEL}"
    )


if __name__ == "__main__":
    main()
