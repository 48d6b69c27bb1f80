"""Stage `weights`: the starting weights train.weights names, fetched into models/start.pt."""

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
    """Write models/start.pt: torchvision's weights from torch's hub cache, a file under weights/,
    or an earlier run's MLflow model, checked against the network train will build (every tensor
    but the head, shapes included) before anything is written; with none, a small file saying so.

    Reads train.model, train.weights and what decides the network's shapes: data.dataset,
    data.channels, data.image_size, train.cnn_channels, train.cnn_stem, train.cnn_hidden,
    train.batch_norm and train.mlp_hidden.
    """
    params = load_params(params_file)
    # Imported once the parameters are valid: a typo is reported at once, not after seconds of
    # imports.
    from pipeline.core import weights

    start = weights.fetch(params, paths.project_root())
    weights.write(paths.START, start)
    what = (
        "no starting weights"
        if start.source == "none"
        else f"{start.source} ({len(start.state_dict)} tensors"
        + (f", from MLflow run {start.source_run_id}" if start.source_run_id else "")
        + ")"
    )
    click.echo(f"{params.train.model}: {what} -> {paths.START}")


if __name__ == "__main__":
    main()
