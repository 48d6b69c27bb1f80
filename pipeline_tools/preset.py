"""`python -m pipeline preset FILE`: run a parameter preset (a partial params file) as a DVC
experiment.

`dvc exp run` takes changed parameters only as `-S key=value`; a preset keeps a tested combination
in a file (presets/accurate.yaml) and this runs `dvc exp run -n <file name> -S …` with its values,
after checking them merged into params.yaml exactly as the stages will.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import click

from pipeline.cli import params_option, reports_errors
from pipeline.core.errors import PipelineError, first_line
from pipeline.core.params import cli_value, flatten, merge, parse_params
from pipeline.core.repo import clean_env, executable
from pipeline.core.validation import did_you_mean_key
from pipeline.core.yamlio import read_mapping, read_yaml


def overrides(preset: Path) -> dict[str, Any]:
    """The preset as written: params.yaml sections with the values it changes."""
    try:
        raw = read_yaml(preset.read_text(), str(preset))
    except FileNotFoundError:
        raise PipelineError(f"{preset}: no such preset file") from None
    except Exception as exc:  # YAML syntax, undecodable bytes
        raise PipelineError(f"{preset}: not a YAML file ({first_line(exc)})") from None
    if not isinstance(raw, dict) or not raw:
        raise PipelineError(
            f"{preset}: a preset is a mapping of params.yaml sections to the values it changes"
        )
    return raw


def check(params_file: Path, raw: dict[str, Any], source: str) -> dict[str, Any]:
    """The preset's values as {dotted.key: value}; PipelineError, naming the preset and the key,
    unless params.yaml with them merged in is valid."""
    base = read_mapping(params_file)
    values = flatten(raw)
    known = flatten(parse_params(base, str(params_file)))
    unknown = [k for k in values if k not in known]
    if unknown:
        close = did_you_mean_key(unknown[0], known) if len(unknown) == 1 else ""
        raise PipelineError(
            f"{source}: {', '.join(unknown)} is not a parameter"
            + (f"; {close}" if close else " (see docs/parameters.md)")
        )
    parse_params(merge(base, raw), source)
    return values


@click.command()
@click.argument("preset", type=click.Path(path_type=Path, dir_okay=False))
@params_option
@click.option(
    "--dry-run", is_flag=True, help="Print the `dvc exp run` command instead of running it."
)
@reports_errors
def main(preset: Path, params_file: Path, dry_run: bool) -> None:
    """Run PRESET (e.g. presets/accurate.yaml) as `dvc exp run -n <its name> -S key=value …`."""
    values = check(params_file, overrides(preset), str(preset))
    cmd = [
        "dvc",
        "exp",
        "run",
        "-n",
        preset.stem,
        *[a for k, v in values.items() for a in ("-S", f"{k}={cli_value(v)}")],
    ]
    click.echo(shlex.join(cmd))
    if not dry_run:
        raise SystemExit(subprocess.run([executable("dvc"), *cmd[1:]], env=clean_env()).returncode)
