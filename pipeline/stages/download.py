"""Stage `download`: the dataset's original files, verified and extracted, into data/raw; or your
pictures, decoded."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from pipeline.cli import params_option, reports_errors
from pipeline.core import paths
from pipeline.core.params import load_params


@click.command()
@params_option
@reports_errors
def main(params_file: Path) -> None:
    """Put the dataset named by data.dataset into data/raw (offline first, MD5-checked); for
    `folder`, decode the pictures of data.folder once, with every core.

    Reads data.dataset, data.mirror, data.folder, data.image_size, data.channels and data.test_size.
    """
    params = load_params(params_file)
    # Imported once the parameters are valid: a typo is reported at once, not after seconds of
    # imports.
    from pipeline.core import decoding, imbalance, originals

    if params.data.dataset == "folder":
        report = decoding.decode_folder(params, len(os.sched_getaffinity(0)), progress_printer())
        splits = ", ".join(f"{name} {split['count']:,}" for name, split in report["splits"].items())
        click.echo(
            f"{params.data.folder}: {len(report['classes'])} classes, {splits} pictures, "
            f"{report['image_size']} px, {report['channels']} channel(s) -> {paths.RAW / 'folder'}"
        )
        if "test_fraction" in report:
            low, high = min(report["test_fraction"].values()), max(report["test_fraction"].values())
            click.echo(f"tested on {low:.0%} to {high:.0%} of each class's pictures")
        skipped = decoding.skipped_summary(report["skipped"])
        if skipped:
            click.echo(f"{skipped}; each with its reason in {paths.RAW / 'folder' / 'report.json'}")
        warning = imbalance.imbalance_warning(report["splits"]["train"]["per_class"])
        if warning:
            click.echo(warning, err=True)
        if report["duplicates"]["count"]:
            click.echo(
                f"warning: {report['duplicates']['count']} picture(s) appear with the same pixels "
                "in two splits "
                f"(e.g. {' and '.join(report['duplicates']['pairs'][0])}): the test accuracy is "
                "inflated",
                err=True,
            )
        if report["conflicts"]["count"]:
            click.echo(
                f"warning: {report['conflicts']['count']} pair(s) of pictures have the same pixels "
                f"under two classes (e.g. {' and '.join(report['conflicts']['pairs'][0])}): one of "
                "each pair's labels is wrong",
                err=True,
            )
        return
    spec, source, notices = originals.fetch(params)
    for notice in notices:
        click.echo(notice)
    how = f"copied from {source}" if source else "downloaded by torchvision"
    click.echo(f"{spec.name}: {how}, verified and extracted into {paths.RAW}")


def progress_printer(every: float = 2.0) -> Callable[[int, int, float], None]:
    """A `progress(done, total, seconds)` that shows a count and a rate: redrawn in place on a
    terminal, a line every `every` seconds in a log."""
    last = [0.0]
    tty = sys.stdout.isatty()

    def show(done: int, total: int, seconds: float) -> None:
        if done < total and time.monotonic() - last[0] < (0.2 if tty else every):
            return
        last[0] = time.monotonic()
        line = f"decoding pictures: {done:,}/{total:,} ({done / max(seconds, 1e-9):,.0f}/s)"
        # stdout: a stage's stderr holds its one error line, if any.
        click.echo(f"\r{line}" if tty else line, nl=not tty or done == total)

    return show


if __name__ == "__main__":
    main()
