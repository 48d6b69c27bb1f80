"""Stage `download`: the dataset's original files, verified and extracted, into data/raw."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline import paths
from pipeline.cli import reports_errors
from pipeline.errors import PipelineError
from pipeline.params import load_params


@click.command()
@click.option("--params", "params_file", type=click.Path(path_type=Path), default=paths.PARAMS, show_default=True)
@reports_errors
def main(params_file: Path) -> None:
    """Put the dataset named by data.dataset into data/raw (offline first, MD5-checked)."""
    params = load_params(params_file)
    # Imported once the parameters are valid: a typo is reported at once, not after seconds of imports.
    from pipeline import datasets
    spec = datasets.get(params.data.dataset)
    mirror = paths.project_root() / params.data.mirror if params.data.mirror else None
    if mirror is not None and not mirror.is_dir():
        raise PipelineError(f"data.mirror: folder {mirror} does not exist")
    source = datasets.download(spec, paths.RAW, mirror)
    how = f"copied from {source}" if source else "downloaded by torchvision"
    click.echo(f"{spec.name}: {how}, verified and extracted into {paths.RAW}")


if __name__ == "__main__":
    main()
