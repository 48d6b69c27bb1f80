"""Stage `train`: fit the model, track the run in MLflow, write the model and training curves."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pipeline.cli import EXIT_USER_ERROR, params_option, reports_errors
from pipeline.core import distributed, paths, trial
from pipeline.core.errors import PipelineError
from pipeline.core.params import load_params

if TYPE_CHECKING:
    from pipeline.core.loop import EpochResult


@click.command()
@params_option
@reports_errors
def main(params_file: Path) -> None:
    """Train on the fitting split, validate every epoch, keep the best weights.

    Reads seed, data.*, train.* and mlflow.*. With train.processes > 1 this command starts that many
    copies of itself under torchrun's launcher and waits for them.
    """
    params = load_params(params_file)
    if params.train.portable:
        from pipeline.core import cpu

        cpu.pin()  # before torch loads (the workers inherit the pins)
    world = distributed.World.from_env()
    if world is None and distributed.wanted(params.train):
        distributed.launch(
            params.train, ["-m", "pipeline.stages.train", "--params", str(params_file)]
        )
        return
    # Imported once the parameters are valid: a typo is reported at once, not after seconds of
    # imports.
    from pipeline.core import tracking
    from pipeline.core.tracking import background

    lead = world is None or world.lead  # rank 0 alone reports, logs to MLflow and writes outputs

    def on_epoch(result: EpochResult) -> bool:
        # A pruned trial ends like an early stop: outputs written, run FINISHED, tagged pruned.
        if (
            reporter is None
            or link is None
            or not reporter.report(result.epoch, result.val_accuracy)
        ):
            return False
        tracker.set_tags({trial.PRUNED_TAG: "true"})
        click.echo(
            f"pruned: trial {link.number} of study {link.study} stops after epoch {result.epoch}"
        )
        return True

    tracker: tracking.Tracker | None = None
    try:  # inside: a worker's error (an unreachable store too) reaches the launcher as its one line
        link = (
            trial.link_from_env() if lead else None
        )  # set when `python -m pipeline sweep` runs this as a trial
        # Started first: the tracking process imports mlflow while this one imports torch.
        tracker = background.BackgroundTracker() if lead else tracking.Tracker()
        from pipeline.core import trainer

        reporter = trial.TrialReporter(link) if link else None
        if world is not None:
            world.check(params.train)
        outcome = trainer.train(
            params,
            tracker,
            log=click.echo if lead else lambda line: None,
            on_epoch=on_epoch,
            progress=lead and sys.stderr.isatty(),  # bars for people; plain epoch lines in CI logs
            tags=link.tags() if link else None,
            world=world,
        )
    except PipelineError as exc:
        if world is None or not distributed.record_error(exc):
            raise
        sys.exit(EXIT_USER_ERROR)  # the launcher prints the line, once for all workers
    finally:
        if tracker is not None:
            tracker.close()
    if lead:
        best = outcome.state.best
        click.echo(
            f"best val_accuracy {best.val_accuracy:.4f} at epoch {outcome.state.best_epoch} "
            f"({outcome.seconds:.1f}s); MLflow run {outcome.run_id} -> {paths.MODEL}"
        )


if __name__ == "__main__":
    main()
