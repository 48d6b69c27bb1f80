"""Per-epoch hooks: how something outside the pipeline watches a train run and may end it early.

A hook is given each finished epoch's result on the main process (rank zero) and may answer `Stop`:
training then ends like an early stop, with the best weights so far and every output written, the
run tagged with the stop's tags. The train stage takes its hook from the module that
`PIPELINE_TRAIN_HOOK` names (`python -m pipeline sweep` sets it for the experiments it starts, so a
hook reaches a `dvc exp run` stage process); without the variable nothing is imported and a run has
no hook. The module gives a `train_hook()` that returns the hook. This module must not import torch.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pipeline.core.errors import PipelineError, first_line

if TYPE_CHECKING:
    from pipeline.core.loop import EpochResult

HOOK_ENV = "PIPELINE_TRAIN_HOOK"  # a dotted module name, importable from the project root
FACTORY = "train_hook"  # what that module must define: () -> EpochHook


@dataclass(frozen=True)
class Stop:
    """A hook's answer that training ends after this epoch."""

    reason: str  # the line a person reads
    tags: Mapping[str, str] = field(default_factory=dict)  # set on the run


class EpochHook(Protocol):
    """What a train run calls besides its own work."""

    def tags(self) -> Mapping[str, str]:
        """Tags set on the run when it starts (e.g. what the run is part of)."""
        ...

    def after_epoch(self, result: EpochResult) -> Stop | None:
        """Called after each epoch is checkpointed and recorded; Stop ends training there."""
        ...


def from_env(environ: Mapping[str, str] | None = None) -> EpochHook | None:
    """The hook the module named by PIPELINE_TRAIN_HOOK gives, or None when the variable is unset.

    Raises PipelineError naming the variable when the module cannot be imported or has no
    `train_hook()`; the factory's own PipelineError passes through.
    """
    environ = os.environ if environ is None else environ
    name = environ.get(HOOK_ENV, "").strip()
    if not name:
        return None
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise PipelineError(f"{HOOK_ENV}: cannot import {name!r} ({first_line(exc)})") from None
    factory = getattr(module, FACTORY, None)
    if not callable(factory):
        raise PipelineError(f"{HOOK_ENV}: module {name} has no {FACTORY}() function")
    hook: EpochHook = factory()
    return hook
