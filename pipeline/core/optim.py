"""Optimizer, learning-rate schedule and loss, each built once from train.* by name.

Each registry raises on a name it does not know (params validates names first; a registry that
falls through to a default would hide a missing entry). tests/test_params.py checks that these
names are exactly the ones core.params accepts.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler

from pipeline.core.params import TrainParams

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

OPTIMIZERS: dict[str, Callable[[Iterable[nn.Parameter], TrainParams], torch.optim.Optimizer]] = {
    "adam": lambda p, c: torch.optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda p, c: torch.optim.AdamW(p, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda p, c: torch.optim.SGD(
        p, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0, weight_decay=c.weight_decay
    ),
    "adadelta": lambda p, c: torch.optim.Adadelta(p, lr=c.lr, weight_decay=c.weight_decay),
    "rmsprop": lambda p, c: torch.optim.RMSprop(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
}

# (optimizer, train params, batches per epoch) → schedule; None = a constant rate.
SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, TrainParams, int], lr_scheduler.LRScheduler | None]] = {
    "none": lambda o, c, steps: None,
    "step": lambda o, c, steps: lr_scheduler.StepLR(o, step_size=c.step_size, gamma=c.gamma),
    "cosine": lambda o, c, steps: lr_scheduler.CosineAnnealingLR(o, T_max=c.epochs),
    "onecycle": lambda o, c, steps: lr_scheduler.OneCycleLR(
        o, max_lr=c.lr, epochs=c.epochs, steps_per_epoch=steps, cycle_momentum=_has_momentum(o)
    ),
}


def _has_momentum(optimizer: torch.optim.Optimizer) -> bool:
    """Whether onecycle can cycle momentum: Adam-style betas, or SGD/RMSprop momentum the user switched on
    (adadelta has none, and cycling would silently turn on momentum that train.momentum: 0 turned off)."""
    return "betas" in optimizer.defaults or optimizer.defaults.get("momentum", 0) > 0
PER_BATCH_SCHEDULERS = frozenset({"onecycle"})  # the others step once per epoch

LOSSES: dict[str, Callable[[TrainParams], Loss]] = {
    "cross_entropy": lambda c: lambda logits, y: F.cross_entropy(logits, y, label_smoothing=c.label_smoothing),
    # The tutorials' NLL on log-softmax outputs, the same maths as cross_entropy, smoothing included.
    "nll": lambda c: lambda logits, y: _smoothed_nll(F.log_softmax(logits, dim=1), y, c.label_smoothing),
}


def _smoothed_nll(log_probs: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """NLL against targets smoothed as cross_entropy's label_smoothing does: 1 - s on the class, s spread
    evenly over all classes."""
    nll = F.nll_loss(log_probs, y)
    return nll if smoothing == 0 else (1 - smoothing) * nll - smoothing * log_probs.mean(1).mean()


def _lookup(registry: dict[str, object], key: str, name: str) -> object:
    if name not in registry:
        raise ValueError(f"train.{key}: no {key} named {name!r} (known: {', '.join(registry)})")
    return registry[name]


def make_optimizer(model: nn.Module, cfg: TrainParams) -> torch.optim.Optimizer:
    """train.optimizer over the parameters that are not frozen."""
    factory = _lookup(OPTIMIZERS, "optimizer", cfg.optimizer)
    return factory([p for p in model.parameters() if p.requires_grad], cfg)  # type: ignore[operator]


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainParams, steps_per_epoch: int
) -> lr_scheduler.LRScheduler | None:
    """train.scheduler for `optimizer` (None for a constant rate); see `steps_per_batch`."""
    return _lookup(SCHEDULERS, "scheduler", cfg.scheduler)(optimizer, cfg, steps_per_epoch)  # type: ignore[operator]


def steps_per_batch(cfg: TrainParams) -> bool:
    """Whether the schedule steps after every batch (onecycle) rather than after every epoch."""
    return cfg.scheduler in PER_BATCH_SCHEDULERS


def make_loss(cfg: TrainParams) -> Loss:
    """train.loss as a function of (logits, labels)."""
    return _lookup(LOSSES, "loss", cfg.loss)(cfg)  # type: ignore[operator]


@dataclass(frozen=True)
class Optimization:
    """What turns a loss into a weight update: built once per run, passed to the loop as one object."""

    optimizer: torch.optim.Optimizer
    scheduler: lr_scheduler.LRScheduler | None
    per_batch: bool  # the schedule steps after every batch, not after every epoch
    loss: Loss
    grad_clip: float | None

    @classmethod
    def build(cls, model: nn.Module, cfg: TrainParams, steps_per_epoch: int) -> Optimization:
        """Optimizer, schedule and loss named by `cfg`, for `model` as it will be trained (device, layout)."""
        optimizer = make_optimizer(model, cfg)
        return cls(optimizer, make_scheduler(optimizer, cfg, steps_per_epoch), steps_per_batch(cfg), make_loss(cfg),
                   cfg.grad_clip)

    def after_batch(self) -> None:
        """Advance a per-batch schedule."""
        if self.scheduler is not None and self.per_batch:
            self.scheduler.step()

    def after_epoch(self) -> None:
        """Advance a per-epoch schedule."""
        if self.scheduler is not None and not self.per_batch:
            self.scheduler.step()
