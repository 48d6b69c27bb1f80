"""Stage `download`: the dataset's original files, verified and extracted, into data/raw."""
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
    """Put the dataset named by data.dataset into data/raw (offline first, MD5-checked).

    Reads data.dataset and data.mirror.
    """
    params = load_params(params_file)
    # Imported once the parameters are valid: a typo is reported at once, not after seconds of imports.
    from pipeline.core import acquisition

    spec, source, notices = acquisition.acquire(params)
    for notice in notices:
        click.echo(notice)
    how = f"copied from {source}" if source else "downloaded by torchvision"
    click.echo(f"{spec.name}: {how}, verified and extracted into {paths.RAW}")


if __name__ == "__main__":
    main()
