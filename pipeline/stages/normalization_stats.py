"""Stage `normalization-stats`: per-channel mean and std of the fitting part of the training
split."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli import params_option, reports_errors
from pipeline.core import paths
from pipeline.core.params import load_params


@click.command()
@params_option
@reports_errors
def main(params_file: Path) -> None:
    """Write data/stats.json from the images train will fit on (validation part excluded).

    Reads seed, data.dataset, data.val_size and data.limit.
    """
    params = load_params(params_file)
    # Imported once the parameters are valid: a typo is reported at once, not after seconds of
    # imports.
    from pipeline.core import normalization

    result = normalization.compute(params)
    mean = ", ".join(f"{m:.4f}" for m in result.mean)
    std = ", ".join(f"{s:.4f}" for s in result.std)
    click.echo(
        f"{params.data.dataset}: mean [{mean}], std [{std}] over {result.count} images -> "
        f"{paths.STATS}"
    )


if __name__ == "__main__":
    main()
