"""The train stage's process: CPU pins, then torchrun's workers launched or training done, rank
zero alone tracking and printing, a worker's error routed to its launcher.

What the train stage's command does between reading its parameters and printing its result, decided
here alone (the mechanisms are pipeline.core.cpu, .distributed and .hooks). Nothing here imports
torch at module level: the CPU pins must be set before torch loads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pipeline.core import cpu, distributed
from pipeline.core.errors import PipelineError, ReportedError

if TYPE_CHECKING:
    from pipeline.core.params import Params
    from pipeline.core.trainer import TrainOutcome


def run_train(
    params: Params,
    argv: Sequence[str],
    log: Callable[[str], None],
    progress: bool,
) -> TrainOutcome | None:
    """The train stage's process: pin the CPU for a portable run (before torch loads; the workers
    inherit the pins), then either launch `train.processes` workers running `python argv…` and wait
    for them, or train, alone or as one of those workers.

    Returns the outcome on the main process (rank zero, or the only one), None after a launch and
    on the other ranks, which print nothing (`log`) and show no bars (`progress`). The module that
    PIPELINE_TRAIN_HOOK names gives the main process its per-epoch hook (pipeline.core.hooks).
    Raises PipelineError; a worker's is handed to the launcher, which prints it once for all of
    them, and raised again as ReportedError.
    """
    cpu.pin_portable(params.train.portable)
    world = distributed.World.from_env()
    if world is None and distributed.wanted(params.train):
        distributed.launch(params.train, argv)
        return None
    # Imported once the parameters are valid: a typo is reported at once, not after seconds of
    # imports.
    from pipeline.core import hooks, tracking
    from pipeline.core.tracking import background

    main_process = distributed.is_main_process(world)
    tracker: tracking.Tracker | None = None
    try:  # inside: a worker's error (an unreachable store too) reaches the launcher as its one line
        # Started first: the tracking process imports mlflow while this one imports torch.
        tracker = background.BackgroundTracker() if main_process else tracking.Tracker()
        from pipeline.core import trainer

        hook = hooks.from_env() if main_process else None
        if world is not None:
            world.check(params.train)
        outcome = trainer.train(
            params,
            tracker,
            log=log if main_process else lambda line: None,
            hook=hook,
            progress=progress and main_process,
            world=world,
        )
    except PipelineError as exc:
        if world is None or not distributed.record_error(exc):
            raise
        raise ReportedError(str(exc)) from None  # the launcher prints the line
    finally:
        if tracker is not None:
            tracker.close()
    return outcome if main_process else None
