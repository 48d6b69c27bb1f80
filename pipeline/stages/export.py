"""Stage `export`: models/model.onnx, checked against the torch model on the test split, into the
train stage's MLflow run."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pipeline.cli import params_option, reports_errors
from pipeline.core import paths
from pipeline.core.params import load_params


@click.command()
@params_option
@reports_errors
def main(params_file: Path) -> None:
    """Export models/model.pt as ONNX (fp32) and check it on every test picture.

    Fails with one line, writing nothing, when a top class differs or a probability differs by more
    than core.export.TOLERANCE. Reads train.portable and train.threads (the same kernels and
    threads as training).
    """
    params = load_params(params_file)
    from pipeline.core import cpu

    cpu.pin_portable(params.train.portable)  # before torch loads
    # As in evaluate: passive OpenMP waits leave the second core to the tracking process.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pipeline.core.tracking import background

    # Started first: the tracking process imports mlflow while this one imports torch.
    tracker = background.BackgroundTracker()
    try:
        from pipeline.core import export

        result, run_id = export.export(params, tracker)
    finally:
        tracker.close()
    click.echo(
        f"{paths.ONNX_MODEL}: the same top class as the fp32 torch model on all "
        f"{result.test_images} test pictures, probabilities within {result.max_abs_prob_diff:.1e} "
        f"(tolerance {result.tolerance:.0e}); MLflow run {run_id}"
    )


if __name__ == "__main__":
    main()
