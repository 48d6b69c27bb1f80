"""`python -m pipeline stack start|stop|status|env|remote`: the Click commands over
pipeline_team.stack."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from pipeline.cli import reports_errors
from pipeline.core import paths
from pipeline_team.stack import remote, start, status, stop
from pipeline_team.stack.config import DIR_ENV, default_dir, export_lines, load

dir_option = click.option(
    "--dir",
    "stack_dir",
    type=click.Path(path_type=Path),
    default=None,
    help=(
        f"The stack folder [default: ${DIR_ENV}, else .stack/ at the project root]. "
        "A colleague's clone names the folder of the stack that runs."
    ),
)


def _dir(stack_dir: Path | None) -> Path:
    return stack_dir or (Path(os.environ[DIR_ENV]) if os.environ.get(DIR_ENV) else default_dir())


@click.group()
def main() -> None:
    """A team stack on 127.0.0.1: PostgreSQL, an S3 store and an authenticated MLflow server."""


@main.command("start")
@dir_option
@reports_errors
def start_command(stack_dir: Path | None) -> None:
    """Start the stack (the same ports and credentials as last time), point this clone's DVC remote
    at it, and print its exports."""
    stack = start(_dir(stack_dir))
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in stack.timings.items())
    rss = sum(c.rss_mib for c in status(stack.dir))
    click.echo(f"# stack in {stack.dir} started ({timings}; {rss:.0f} MiB resident)", err=True)
    if (paths.project_root() / ".dvc").is_dir():
        remote.configure(stack, paths.project_root())
        click.echo(
            f"# DVC remote {remote.NAME!r} of this clone -> {stack.s3_endpoint} "
            "(.dvc/config.local)",
            err=True,
        )
    click.echo("# for this shell:", err=True)
    click.echo(export_lines(stack))


@main.command("stop")
@dir_option
@reports_errors
def stop_command(stack_dir: Path | None) -> None:
    """Stop every process of the stack (found by the sessions `start` began); data, ports and
    credentials stay."""
    for line in stop(_dir(stack_dir)):
        click.echo(line)


@main.command("status")
@dir_option
@reports_errors
def status_command(stack_dir: Path | None) -> None:
    """Each piece's state, processes, port and resident memory; exit 1 unless all run."""
    states = status(_dir(stack_dir))
    for c in states:
        pids = f"pids {','.join(map(str, c.pids))}" if c.pids else ""
        click.echo(
            f"{c.name:<9} 127.0.0.1:{c.port:<6} {c.state}  {pids} {c.rss_mib:.0f} MiB".rstrip()
        )
    click.echo(f"total resident memory: {sum(c.rss_mib for c in states):.0f} MiB")
    if not all(c.running for c in states):
        sys.exit(1)


@main.command("env")
@dir_option
@reports_errors
def env_command(stack_dir: Path | None) -> None:
    """Print the export lines for the stack: `eval "$(python -m pipeline stack env)"`."""
    click.echo(export_lines(load(_dir(stack_dir))))


@main.command("remote")
@dir_option
@reports_errors
def remote_command(stack_dir: Path | None) -> None:
    """Point this clone's DVC remote `team` at the stack's S3 store (for a colleague's clone;
    `start` does it for its own)."""
    for line in remote.configure(load(_dir(stack_dir)), paths.project_root()):
        click.echo(line)
