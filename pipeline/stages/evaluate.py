"""Stage `evaluate`: test-set metrics, DVC plots, the ONNX export checked on the test split, and
all of it in the train stage's MLflow run."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pipeline.cli import params_option, reports_errors
from pipeline.core import cpu, paths
from pipeline.core.params import load_params


@click.command()
@params_option
@reports_errors
def main(params_file: Path) -> None:
    """Evaluate models/model.pt on the test split and export it as models/model.onnx, checked on
    every test picture; everything but evaluate.* comes with the model.

    Fails with one line, writing nothing, when the ONNX model's top class differs from the torch
    model's or a probability by more than core.export.TOLERANCE.

    Reads evaluate.*, and train.portable and train.threads (the same kernels and threads as
    training).
    """
    params = load_params(params_file)
    cpu.pin_portable(params.train.portable)  # before torch loads
    # Inference shares the two cores with the tracking process, which imports mlflow meanwhile:
    # OpenMP threads spinning at every barrier take the core it needs and then wait for it, several
    # times slower than passive waiting. Read when torch loads; a user's setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pipeline.core.tracking import background

    # Started first: the tracking process imports mlflow while this one imports torch.
    tracker = background.BackgroundTracker(prepare=("matplotlib.pyplot",))  # it draws the figures
    try:
        from pipeline.core import evaluator
        from pipeline.core.metrics import per_class_table, quality_warning

        rep, parity, run_id = evaluator.evaluate(params, tracker)
    finally:
        tracker.close()
    click.echo(per_class_table(rep))
    warning = quality_warning(rep)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    pairs = ", ".join(f"{a} as {p} ({n})" for a, p, n in rep.confused_pairs(3))
    if pairs:
        click.echo(f"most confused: {pairs} (all mistakes: plots/predictions.csv)")
    click.echo(
        f"{paths.ONNX_MODEL}: the same top class as the fp32 torch model on all "
        f"{parity.test_images} test pictures, probabilities within {parity.max_abs_prob_diff:.1e} "
        f"(tolerance {parity.tolerance:.0e})"
    )
    click.echo(
        f"test accuracy {rep.accuracy:.4f} (balanced {rep.balanced_accuracy:.4f}), loss "
        f"{rep.loss:.4f}, macro F1 {rep.macro_f1:.4f}; MLflow run {run_id}"
    )


if __name__ == "__main__":
    main()
