"""Shared glue for the stage commands: one-line errors and exit codes."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from pipeline.errors import PipelineError

F = TypeVar("F", bound=Callable[..., object])

EXIT_USER_ERROR = 2  # the same code Click uses for usage errors


def reports_errors(func: F) -> F:
    """Turn a PipelineError into `error: …` on stderr and exit code 2, with no traceback.

    Anything else is a bug in this package and keeps its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
