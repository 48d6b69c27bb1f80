"""`python -m pipeline stack start|stop|status|env`: the Click commands over pipeline_team.stack."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.cli import reports_errors
from pipeline_team.stack import default_dir, export_lines, load, start, status, stop


dir_option = click.option("--dir", "stack_dir", type=click.Path(path_type=Path), default=None,
                          help="The stack folder [default: .stack/ at the project root].")


@click.group()
def main() -> None:
    """A team stack on 127.0.0.1: PostgreSQL, an S3 store and an authenticated MLflow server."""


@main.command("start")
@dir_option
@reports_errors
def start_command(stack_dir: Path | None) -> None:
    """Start the stack (the same ports and credentials as last time) and print its exports."""
    stack = start(stack_dir or default_dir())
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in stack.timings.items())
    rss = sum(c.rss_mib for c in status(stack.dir))
    click.echo(f"# stack in {stack.dir} started ({timings}; {rss:.0f} MiB resident); for this shell:", err=True)
    click.echo(export_lines(stack))


@main.command("stop")
@dir_option
@reports_errors
def stop_command(stack_dir: Path | None) -> None:
    """Stop the processes `start` launched (by their pid); data, ports and credentials stay."""
    for line in stop(stack_dir or default_dir()):
        click.echo(line)


@main.command("status")
@dir_option
@reports_errors
def status_command(stack_dir: Path | None) -> None:
    """Pid, port and resident memory of each piece; exit 1 unless all run."""
    states = status(stack_dir or default_dir())
    for c in states:
        state = f"running  pid {c.pid:<7} {c.rss_mib:6.0f} MiB" if c.running else "stopped" + (f" (stale pid {c.pid})" if c.pid else "")
        click.echo(f"{c.name:<9} 127.0.0.1:{c.port:<6} {state}")
    click.echo(f"total resident memory: {sum(c.rss_mib for c in states):.0f} MiB")
    if not all(c.running for c in states):
        sys.exit(1)


@main.command("env")
@dir_option
@reports_errors
def env_command(stack_dir: Path | None) -> None:
    """Print the export lines for the stack: `eval "$(python -m pipeline stack env)"`."""
    click.echo(export_lines(load(stack_dir or default_dir())))


if __name__ == "__main__":
    main()
