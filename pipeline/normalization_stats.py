"""Stage `normalization-stats`: per-channel mean and std of the fitting part of the training split."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline import paths
from pipeline.cli import reports_errors
from pipeline.params import load_params


@click.command()
@click.option("--params", "params_file", type=click.Path(path_type=Path), default=paths.PARAMS, show_default=True)
@reports_errors
def main(params_file: Path) -> None:
    """Write data/stats.json from the images train will fit on (validation part excluded)."""
    params = load_params(params_file)
    # Imported once the parameters are valid: a typo is reported at once, not after seconds of imports.
    from pipeline import datasets, splits, stats
    spec = datasets.get(params.data.dataset)
    images, labels = datasets.load_split(spec, paths.RAW, train=True)
    fit_idx, _ = splits.split_indices(labels, params.data.val_size, params.seed, params.data.limit)
    result = stats.channel_stats(images, fit_idx)
    stats.save(paths.STATS, result, spec.name)
    mean = ", ".join(f"{m:.4f}" for m in result.mean)
    std = ", ".join(f"{s:.4f}" for s in result.std)
    click.echo(f"{spec.name}: mean [{mean}], std [{std}] over {result.count} images -> {paths.STATS}")


if __name__ == "__main__":
    main()
