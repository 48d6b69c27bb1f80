"""The names train.model, train.cnn_stem, train.optimizer, train.scheduler and train.loss accept.

Each name is that of the function implementing it: in core.models for architectures, in core.optim
for optimizers, schedules and losses (`implementations` maps one to the other when those modules
load). The names live apart from that code because every stage checks the whole params.yaml, and DVC
reruns a stage when a module it imports changes (dvc.yaml lists them): editing a network or an
optimizer reruns train and evaluate, never the decoding of your pictures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ARCHITECTURES = ("cnn", "mlp", "resnet", "resnet18")
CNN_STEMS = ("pool", "stride2")  # core.models.cnn reads it
OPTIMIZERS = ("adam", "adamw", "sgd", "adadelta", "rmsprop")
SCHEDULERS = ("none", "step", "cosine", "onecycle")
PER_BATCH_SCHEDULERS = frozenset({"onecycle"})  # the others step once per epoch
LOSSES = ("cross_entropy", "nll")


def implementations(
    namespace: dict[str, Any], names: tuple[str, ...]
) -> dict[str, Callable[..., Any]]:
    """name → the function of that name in `namespace` (a module's globals()); KeyError for a name
    with none, as the module loads."""
    return {name: namespace[name] for name in names}
