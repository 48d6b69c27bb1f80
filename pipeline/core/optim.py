"""Optimizer, learning-rate schedule and loss: one function per name train.optimizer,
train.scheduler and train.loss accept (the dicts OPTIMIZERS, SCHEDULERS and LOSSES; core.params
lists the same names as those parameters' choices). torch is imported inside them: a stage that only
checks its parameters does not pay for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

    from pipeline.core.params import TrainParams

Loss = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def adam(p: Iterable[nn.Parameter], c: TrainParams) -> Optimizer:
    """torch.optim.Adam with train.lr, train.betas and train.weight_decay (L2)."""
    from torch.optim import Adam

    return Adam(p, lr=c.lr, betas=(c.betas[0], c.betas[1]), weight_decay=c.weight_decay)


def adamw(p: Iterable[nn.Parameter], c: TrainParams) -> Optimizer:
    """torch.optim.AdamW with train.lr, train.betas and train.weight_decay (decoupled)."""
    from torch.optim import AdamW

    return AdamW(p, lr=c.lr, betas=(c.betas[0], c.betas[1]), weight_decay=c.weight_decay)


def sgd(p: Iterable[nn.Parameter], c: TrainParams) -> Optimizer:
    """torch.optim.SGD with train.lr, train.momentum, train.nesterov (only with momentum) and
    train.weight_decay."""
    from torch.optim import SGD

    return SGD(
        p,
        lr=c.lr,
        momentum=c.momentum,
        nesterov=c.nesterov and c.momentum > 0,
        weight_decay=c.weight_decay,
    )


def adadelta(p: Iterable[nn.Parameter], c: TrainParams) -> Optimizer:
    """torch.optim.Adadelta with train.lr and train.weight_decay."""
    from torch.optim import Adadelta

    return Adadelta(p, lr=c.lr, weight_decay=c.weight_decay)


def rmsprop(p: Iterable[nn.Parameter], c: TrainParams) -> Optimizer:
    """torch.optim.RMSprop with train.lr, train.momentum and train.weight_decay."""
    from torch.optim import RMSprop

    return RMSprop(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)


OPTIMIZERS: dict[str, Callable[[Iterable[nn.Parameter], TrainParams], Optimizer]] = {
    "adam": adam,
    "adamw": adamw,
    "sgd": sgd,
    "adadelta": adadelta,
    "rmsprop": rmsprop,
}


def constant(o: Optimizer, c: TrainParams, steps: int) -> None:
    """No schedule: a constant rate."""
    return None


def step_lr(o: Optimizer, c: TrainParams, steps: int) -> LRScheduler:
    """torch's StepLR: the rate times train.gamma every train.step_size epochs."""
    from torch.optim.lr_scheduler import StepLR

    return StepLR(o, step_size=c.step_size, gamma=c.gamma)


def cosine_annealing(o: Optimizer, c: TrainParams, steps: int) -> LRScheduler:
    """torch's CosineAnnealingLR over train.epochs."""
    from torch.optim.lr_scheduler import CosineAnnealingLR

    return CosineAnnealingLR(o, T_max=c.epochs)


# OneCycleLR's share of the steps spent rising to the peak rate (torch's default pct_start), named
# because early stopping waits for the peak (`peak_epoch`).
ONE_CYCLE_RISE = 0.3


def peak_epoch(c: TrainParams) -> int:
    """The epoch (1-based, 0 = before the first) by whose end train.scheduler has brought the
    learning rate to its peak: one-cycle's rise, ONE_CYCLE_RISE of train.epochs rounded up; 0 for
    the schedules that start at their peak."""
    if c.scheduler != "onecycle" or c.epochs == "auto":
        return 0
    return math.ceil(ONE_CYCLE_RISE * c.epochs)


def one_cycle(o: Optimizer, c: TrainParams, steps: int) -> LRScheduler:
    """torch's OneCycleLR up to train.lr and down over train.epochs × `steps` batches (Smith &
    Topin, 2017)."""
    from torch.optim.lr_scheduler import OneCycleLR

    # Momentum is cycled only where asked and there is some: Adam-style betas, or SGD/RMSprop
    # momentum the user switched on (adadelta has none, and cycling would turn on momentum that
    # train.momentum: 0 turned off).
    cycle = c.cycle_momentum and ("betas" in o.defaults or o.defaults.get("momentum", 0) > 0)
    # Each parameter group's own peak (train.backbone_lr_scale gives the backbone a lower one).
    peaks = [group["lr"] for group in o.param_groups]
    return OneCycleLR(
        o,
        max_lr=peaks,
        epochs=c.epochs,
        steps_per_epoch=steps,
        pct_start=ONE_CYCLE_RISE,
        cycle_momentum=cycle,
    )


# (optimizer, train params, batches per epoch) -> schedule; None = a constant rate.
SCHEDULERS: dict[str, Callable[[Optimizer, TrainParams, int], LRScheduler | None]] = {
    "none": constant,
    "step": step_lr,
    "cosine": cosine_annealing,
    "onecycle": one_cycle,
}
PER_BATCH_SCHEDULERS = frozenset({"onecycle"})  # the others step once per epoch


def cross_entropy(c: TrainParams, weight: torch.Tensor | None = None) -> Loss:
    """Cross-entropy on logits (N×classes float) and int64 labels (N), with train.label_smoothing
    and the per-class `weight` (float32 classes; None = every class 1). With both, torch weights
    the smoothing term too: each class's share of it by its weight, the sum divided by the summed
    weights of the batch's labels, as the main term is."""
    import torch.nn.functional as F

    return lambda logits, y: F.cross_entropy(
        logits, y, weight=weight, label_smoothing=c.label_smoothing
    )


def nll(c: TrainParams, weight: torch.Tensor | None = None) -> Loss:
    """The tutorials' NLL on log-softmax outputs: the same maths as cross_entropy, smoothing and
    class weights included (1 - s on the class, s spread evenly over all classes, as
    cross_entropy's label_smoothing does; with a `weight`, both terms weighted and normalised as
    cross_entropy weights them, tests/test_imbalance.py compares the two)."""
    import torch.nn.functional as F

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits, dim=1)
        nll = F.nll_loss(log_probs, y, weight=weight)
        # At smoothing 0 the second term is skipped, not multiplied by 0: 0 × a −inf log-probability
        # is NaN.
        s = c.label_smoothing
        if s == 0:
            return nll
        if weight is None:
            return (1 - s) * nll - s * log_probs.mean(1).mean()
        smooth = (log_probs * weight).sum() / (weight[y].sum() * log_probs.shape[1])
        return (1 - s) * nll - s * smooth

    return loss


# (train params, per-class weights or None) -> loss
LOSSES: dict[str, Callable[[TrainParams, torch.Tensor | None], Loss]] = {
    "cross_entropy": cross_entropy,
    "nll": nll,
}


@dataclass(frozen=True)
class Optimization:
    """What turns a loss into a weight update: built once per run, passed to the loop as one
    object."""

    optimizer: Optimizer
    scheduler: LRScheduler | None
    per_batch: bool  # the schedule steps after every batch, not after every epoch
    loss: Loss
    grad_clip: float | None

    @classmethod
    def build(
        cls,
        model: nn.Module,
        cfg: TrainParams,
        steps_per_epoch: int,
        class_weights: torch.Tensor | None = None,
    ) -> Optimization:
        """Optimizer (over the parameters that are not frozen; the head and the backbone in two
        groups with train.backbone_lr_scale), schedule and loss named by `cfg`, for `model` as it
        will be trained (device, layout); the loss weighted by `class_weights` (float32 classes, on
        the training device; core.imbalance.class_weights). Raises KeyError for a name none of the
        dicts holds (core.params refuses those first)."""
        from pipeline.core import finetune

        optimizer = OPTIMIZERS[cfg.optimizer](finetune.parameter_groups(model, cfg), cfg)
        scheduler = SCHEDULERS[cfg.scheduler](optimizer, cfg, steps_per_epoch)
        return cls(
            optimizer,
            scheduler,
            cfg.scheduler in PER_BATCH_SCHEDULERS,
            LOSSES[cfg.loss](cfg, class_weights),
            cfg.grad_clip,
        )

    def after_batch(self) -> None:
        """Advance a per-batch schedule."""
        if self.scheduler is not None and self.per_batch:
            self.scheduler.step()

    def after_epoch(self) -> None:
        """Advance a per-epoch schedule."""
        if self.scheduler is not None and not self.per_batch:
            self.scheduler.step()
