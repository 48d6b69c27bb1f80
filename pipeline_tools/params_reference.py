"""`python -m pipeline params-reference`: the Markdown table of every parameter pasted into the README."""
from __future__ import annotations

import click

from pipeline.core.params import reference


@click.command()
def main() -> None:
    """Print the parameter reference as a Markdown table (it is pasted into the README)."""
    click.echo("| key | default | allowed | what it does |")
    click.echo("| --- | --- | --- | --- |")
    for key, default, allowed, text in reference():
        click.echo(f"| `{key}` | `{default}` | {allowed} | {text} |")


if __name__ == "__main__":
    main()
