"""Click glue shared by the stage and tool commands: the --params option and one-line errors."""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from pipeline.core import paths
from pipeline.core.errors import PipelineError, ReportedError

F = TypeVar("F", bound=Callable[..., object])

EXIT_USER_ERROR = 2  # the same code Click uses for usage errors
STAGES = "pipeline.stages."  # the package of the commands dvc.yaml runs

params_option = click.option(
    "--params",
    "params_file",
    type=click.Path(path_type=Path),
    default=paths.PARAMS,
    show_default=True,
    help="The parameters file.",
)


def reports_errors(func: F) -> F:
    """Turn a PipelineError into `error: …` on stderr and exit code 2, with no traceback (a
    ReportedError, printed elsewhere, into exit code 2 alone).

    Anything else is a bug in this package and keeps its traceback.
    """
    func = guards_inputs(func) if _module(func).startswith(STAGES) else func  # a stage of dvc.yaml

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            if not isinstance(exc, ReportedError):
                click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        finally:
            # The command's work is done; what is left is the interpreter's exit, whose last garbage
            # collection walks every object torch's imports made (long after training). Frozen, it
            # skips them.
            gc.freeze()

    return wrapper  # type: ignore[return-value]


def guards_inputs(func: F) -> F:
    """Stop a stage, in one line, when its inputs in dvc.yaml (its parameters in --params, its deps)
    change while it runs: checked before every output replaces its previous version and once more
    at the end (core.workspace). The stage's name is its module's (normalization_stats ->
    normalization-stats)."""
    stage = _module(func).removeprefix(STAGES).replace("_", "-")

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> object:
        from pipeline.core import atomic, workspace

        params_file = kwargs.get("params_file")
        guard = workspace.InputGuard(
            stage, params_file if isinstance(params_file, Path) else paths.PARAMS
        )
        with atomic.checked(guard.check):
            result = func(*args, **kwargs)
        guard.check()
        return result

    return wrapper  # type: ignore[return-value]


def _module(func: Callable[..., object]) -> str:
    """The dotted name of `func`'s module, also when it runs as `python -m` (dvc.yaml's commands),
    where Python names it __main__."""
    if func.__module__ == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is not None:
            return str(spec.name)
    return func.__module__
