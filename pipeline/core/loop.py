"""The training loop: whole splits as uint8 tensors on the device; epochs with early stopping.

Images stay uint8 until a batch is drawn and the model normalises each batch itself: no per-sample
transforms, no DataLoader. Read `fit` top to bottom: shuffle (or draw class-balanced), train one
epoch, validate, keep the best weights, hand the state to `on_epoch` (which checkpoints it), stop
when patience runs out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.core import augment, finetune, imbalance, models
from pipeline.core.errors import PipelineError
from pipeline.core.optim import Optimization, peak_epoch
from pipeline.core.params import TrainParams
from pipeline.core.runtime import Runtime

if TYPE_CHECKING:
    from pipeline.core.distributed import World


@dataclass(frozen=True)
class TrainData:
    """The training split resident on the device: every image once, which of them to fit on, the
    validation set."""

    # uint8 N×C×H×W: a tensor, or datasets.PagedImages (pictures on disk, gathered per batch).
    images: Any
    labels: torch.Tensor  # int64 N
    fit_idx: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    augment: str | None = None  # augment.KINDS: how every training batch is augmented
    policy: augment.Transform | None = None  # data.augment_policy & co., per picture, after it
    mixer: finetune.Mixer | None = None  # MixUp/CutMix: soft targets, last
    # float64 per fitting image: data.sampler balanced draws by these (imbalance.sample_weights);
    # None = a permutation per epoch.
    sample_weights: torch.Tensor | None = None

    @classmethod
    def on(
        cls,
        rt: Runtime,
        images: Any,
        labels: torch.Tensor,
        fit_idx: torch.Tensor,
        val: tuple[torch.Tensor, torch.Tensor],
        augment: str | None = None,
        policy: augment.Transform | None = None,
        mixer: finetune.Mixer | None = None,
        sample_weights: torch.Tensor | None = None,
    ) -> TrainData:
        """Move the split (a tensor) and the validation images and labels to the runtime's device
        once: no per-batch host→device copies. Pictures on disk stay there; each batch goes to the
        device."""
        if isinstance(images, torch.Tensor):
            images = images.to(rt.device)
        return cls(
            images,
            labels.to(rt.device),
            fit_idx.to(rt.device),
            val[0].to(rt.device),
            val[1].to(rt.device),
            augment,
            policy,
            mixer,
            sample_weights,
        )

    def batches_per_epoch(self, batch_size: int) -> int:
        """Full batches in one epoch (the tail is dropped), at least one."""
        return max(1, len(self.fit_idx) // batch_size)


@dataclass(frozen=True)
class EpochResult:
    """One row of plots/train.csv and one step of the MLflow curves."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float

    def metrics(self) -> dict[str, float]:
        """Everything but the epoch number, for MLflow."""
        return {k: v for k, v in asdict(self).items() if k != "epoch"}


@dataclass(frozen=True)
class TrainState:
    """Where training stands after `epoch` finished epochs: what a checkpoint holds and a resume
    needs.

    `model`, `optimizer` and `scheduler` are the live state dicts of the last epoch (None before the
    first); `best_state` is a copy of the best epoch's weights.
    """

    generator: torch.Tensor  # the shuffling/augmentation generator
    torch_rng: torch.Tensor | None = None  # torch's global RNG (dropout); None = leave it as it is
    epoch: int = 0
    model: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    history: tuple[EpochResult, ...] = field(default_factory=tuple)
    best_acc: float = -math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    ema: dict[str, torch.Tensor] | None = None  # train.ema_decay: the averaged model's state dict

    @classmethod
    def start(cls, seed: int) -> TrainState:
        """Before the first epoch."""
        return cls(generator=torch.Generator().manual_seed(seed).get_state())

    @property
    def best(self) -> EpochResult:
        """The epoch whose weights the model ends with."""
        return self.history[self.best_epoch - 1]

    def patience_exhausted(self, cfg: TrainParams) -> bool:
        """Early stopping, decided here alone: `patience` epochs have passed without a better
        one, counted from the learning rate's peak on (optim.peak_epoch): while one-cycle still
        raises the rate, validation says little about where the run ends, and a folder's tiny
        validation split would stop it on noise before it has learned."""
        return (
            cfg.patience is not None
            and self.best_epoch > 0
            and self.epoch - max(self.best_epoch, peak_epoch(cfg)) >= cfg.patience
        )

    def finished(self, cfg: TrainParams) -> bool:
        """No epoch left to run."""
        return self.epoch >= cfg.epochs or self.patience_exhausted(cfg)


def batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    batch_size: int,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images, labels) batches of `indices`, in the order given."""
    stop = len(indices)
    if drop_last and stop > batch_size:
        stop -= stop % batch_size  # a size-1 tail batch would break BatchNorm
    for start in range(0, stop, batch_size):
        idx = indices[start : start + batch_size]
        yield images[idx], labels[idx]


CHECK_EVERY = (
    50  # steps between looks at whether the loss is still finite (a look syncs the device)
)


class Diverged(Exception):
    """The training loss became NaN or infinite (`step` counts from 1 within the epoch; `lr` was its
    rate)."""

    def __init__(self, step: int, steps: int, lr: float) -> None:
        super().__init__(f"step {step} of {steps}")
        self.step, self.steps, self.lr = step, steps, lr


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    opt: Optimization,
    rt: Runtime,
    world: World | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One optimizer step on a batch (uint8 images N×C×H×W, int64 labels N); with a `world`, on
    this rank's part of the global batch. Returns (the mean loss, float32 scalar; the logits,
    float32 n×classes; the n labels trained on, on the device; the learning rate of the step), the
    tensors detached."""
    scale = 1.0
    if world is not None:
        size = len(y)
        x, y = world.part(x), world.part(y)
        # DDP averages the ranks' gradients; weighting each rank's mean loss by its share makes
        # that average the gradient of the global batch's mean loss, also when the parts differ
        # by one.
        scale = len(y) * world.size / size
    x, y = rt.images(x), y.to(rt.device, non_blocking=True)
    with rt.autocast():
        logits = model(x)
        loss = opt.loss(logits.float(), y)
    opt.optimizer.zero_grad(set_to_none=True)
    (loss if world is None else loss * scale).backward()
    if opt.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
    rate = opt.optimizer.param_groups[0]["lr"]
    opt.optimizer.step()
    opt.after_batch()
    return loss.detach(), logits.detach(), y, rate


def train_one_epoch(
    model: nn.Module,
    batch_iter: Iterator[tuple[torch.Tensor, torch.Tensor]],
    opt: Optimization,
    rt: Runtime,
    progress: Any = None,
    world: World | None = None,
    frozen: bool = False,
    ema: Any = None,
) -> tuple[float, float]:
    """One pass over the batches; returns (mean loss, accuracy). `progress` is an optional tqdm bar;
    `frozen` keeps the batch-norm statistics (the backbone is frozen); `ema` (a torch AveragedModel)
    is updated after every step. Labels are int64 N, or soft targets N×classes (MixUp, CutMix),
    scored by their largest share.

    With a `world`, `model` is the DDP wrapper and each rank trains on its part of every (global)
    batch; the returned numbers are over all ranks. Raises Diverged once the loss is not finite
    (looked at every CHECK_EVERY steps and at the end, so the device is not synced per batch).
    """
    model.train()
    if frozen:
        finetune.freeze_batch_norm(model)
    total_loss = torch.zeros((), dtype=torch.float64, device=rt.device)
    correct = torch.zeros((), dtype=torch.int64, device=rt.device)
    first_bad = torch.full(
        (), -1, dtype=torch.int64, device=rt.device
    )  # first step with a non-finite loss
    rates: list[float] = []
    seen = 0
    for x, y in batch_iter:
        loss, logits, y, rate = train_step(model, x, y, opt, rt, world)
        if ema is not None:
            ema.update_parameters(model)
        y = y if y.dim() == 1 else y.argmax(1)
        rates.append(rate)
        # Accumulate on the device: no host sync per batch.
        total_loss += loss * len(y)
        correct += (logits.argmax(1) == y).sum()
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), len(rates), first_bad)
        seen += len(y)
        if len(rates) % CHECK_EVERY == 0 and int(first_bad) > 0:
            raise Diverged(int(first_bad), len(rates), rates[int(first_bad) - 1])
        if progress is not None:
            progress.update(1)
            if progress.n % 20 == 0:  # reading the totals syncs the device; not every batch
                progress.set_postfix(
                    loss=f"{float(total_loss) / seen:.4f}", acc=f"{int(correct) / seen:.4f}"
                )
    if int(first_bad) > 0:
        raise Diverged(int(first_bad), len(rates), rates[int(first_bad) - 1])
    return epoch_means(total_loss, correct, seen, rt, world)


def epoch_means(
    total_loss: torch.Tensor, correct: torch.Tensor, seen: int, rt: Runtime, world: World | None
) -> tuple[float, float]:
    """(mean loss, accuracy) from this process's sums (float64 loss × items, int64 correct, items
    seen); with a `world`, over every rank's."""
    if world is None:
        return float(total_loss) / seen, int(correct) / seen
    totals = world.sum(
        torch.stack(
            [
                total_loss,
                correct.double(),
                torch.tensor(float(seen), device=rt.device, dtype=torch.float64),
            ]
        )
    )
    return float(totals[0]) / float(totals[2]), float(totals[1]) / float(totals[2])


def validate(
    model: nn.Module, data: TrainData, rt: Runtime, world: World | None = None
) -> tuple[float, float]:
    """(loss, accuracy) on the validation set; with a `world` each rank scores its part and the sums
    are all-reduced, which gives the same two numbers as one process would (up to float
    rounding)."""
    if world is None:
        val_logits = models.logits(
            model, data.val_images, rt.device, rt.autocast_dtype, rt.channels_last
        )
        labels = data.val_labels.cpu()
        # Plain cross-entropy, not train.loss: with label smoothing the training loss is not a
        # likelihood, and one scale lets runs with different losses be compared (nll on log-softmax
        # is the same maths). In float64: a diverged model's huge but finite logits would overflow
        # float32 to an infinite loss.
        loss = F.cross_entropy(val_logits.double(), labels)
        return float(loss), int((val_logits.argmax(1) == labels).sum()) / len(labels)
    world.sync_buffers(model)
    part_logits = models.logits(
        model, world.part(data.val_images), rt.device, rt.autocast_dtype, rt.channels_last
    ).double()
    part_labels = world.part(data.val_labels).cpu()
    totals = world.sum(
        torch.stack(
            [
                F.cross_entropy(part_logits, part_labels, reduction="sum"),
                (part_logits.argmax(1) == part_labels).sum().double(),
            ]
        )
    )
    return float(totals[0]) / len(data.val_labels), float(totals[1]) / len(data.val_labels)


def _restore(state: TrainState, model: nn.Module, opt: Optimization, ema: Any) -> torch.Generator:
    """Put a (resumed) state's weights, optimizer, schedule, averaged weights and RNGs in place;
    returns its shuffling generator."""
    if ema is not None and state.ema is not None:
        ema.load_state_dict(state.ema)
    generator = torch.Generator()
    generator.set_state(state.generator)
    if state.model is not None:
        model.load_state_dict(state.model)
        opt.optimizer.load_state_dict(state.optimizer)
        if opt.scheduler is not None:
            opt.scheduler.load_state_dict(state.scheduler)
    if state.torch_rng is not None:
        torch.set_rng_state(state.torch_rng)
    return generator


def _advance(
    state: TrainState,
    result: EpochResult,
    model: nn.Module,
    opt: Optimization,
    generator: torch.Generator,
    cfg: TrainParams,
    ema: Any = None,
) -> TrainState:
    """The state after the epoch `result` describes (a copy of the weights kept when it is the best
    so far: the averaged ones with `ema`)."""
    kept = model.state_dict() if ema is None else finetune.averaged_weights(ema)
    better = state.best_state is None or result.val_accuracy > state.best_acc + cfg.min_delta
    return replace(
        state,
        generator=generator.get_state(),
        torch_rng=torch.get_rng_state(),
        epoch=result.epoch,
        model=model.state_dict(),
        optimizer=opt.optimizer.state_dict(),
        scheduler=opt.scheduler.state_dict() if opt.scheduler is not None else None,
        history=(*state.history, result),
        ema=ema.state_dict() if ema is not None else None,
        **(
            {
                "best_acc": result.val_accuracy,
                "best_epoch": result.epoch,
                "best_state": {k: v.detach().clone() for k, v in kept.items()},
            }
            if better
            else {}
        ),
    )


def epoch_batches(
    data: TrainData, shuffled: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's training batches of `shuffled` (full ones), augmented as `data` says, each draw
    from `generator` in turn: (uint8 images, int64 labels), or with a mixer (float images in
    [0, 1], soft targets N×classes)."""
    batch_iter = batches(data.images, data.labels, shuffled, batch_size, drop_last=True)
    if data.augment:
        kind = data.augment
        batch_iter = ((augment.batch(x, generator, kind), y) for x, y in batch_iter)
    if data.policy is not None:
        transform = data.policy
        batch_iter = ((augment.with_policy(x, generator, transform), y) for x, y in batch_iter)
    if data.mixer is not None:
        batch_iter = (_mixed(data.mixer, x, y, generator) for x, y in batch_iter)
    return batch_iter


def _mixed(
    mixer: finetune.Mixer, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`mixer` on one batch, seeded from `generator`."""
    with augment.drawn_seed(generator):
        return mixer(x, y)


def fit(
    model: nn.Module,
    data: TrainData,
    opt: Optimization,
    cfg: TrainParams,
    rt: Runtime,
    state: TrainState,
    on_epoch: Callable[[EpochResult, TrainState], bool | None] = lambda result, state: None,
    progress: bool = False,
    world: World | None = None,
) -> TrainState:
    """Train from `state` (fresh or a checkpoint) until the epochs or the patience run out, or
    `on_epoch` returns True (a per-epoch hook stopping the run); the model ends with its best
    weights. Resuming a state an interrupted run handed to `on_epoch` ends with exactly the weights
    of an uninterrupted run. With a `world` (several processes), every rank calls this with the same
    state and data: they draw the same global batches and each trains on its part of them (and
    `on_epoch` returns the same on all). Raises PipelineError when the training loss becomes NaN or
    infinite."""
    ema = finetune.averaged(model, cfg)
    generator = _restore(state, model, opt, ema)
    steps = data.batches_per_epoch(cfg.batch_size)
    trained, was_frozen = model, None
    while not state.finished(cfg):
        epoch, start = state.epoch + 1, time.perf_counter()
        # From the epoch's number alone: a resumed run freezes as an uninterrupted one.
        frozen = finetune.freezes(cfg) and finetune.frozen(cfg, epoch)
        if frozen != was_frozen:  # DDP must be wrapped anew when other parameters take gradients
            if finetune.freezes(cfg):
                finetune.set_frozen(model, frozen)
            trained = model if world is None else world.data_parallel(model, rt.device)
            was_frozen = frozen
        lr = opt.optimizer.param_groups[0]["lr"]
        order = imbalance.epoch_order(len(data.fit_idx), data.sample_weights, generator)
        shuffled = data.fit_idx[order.to(rt.device)]
        if world is not None:
            world.reseed(generator)
        batch_iter = epoch_batches(data, shuffled, cfg.batch_size, generator)
        with tqdm(
            total=steps, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not progress
        ) as bar:
            try:
                train_loss, train_acc = train_one_epoch(
                    trained, batch_iter, opt, rt, bar if progress else None, world, frozen, ema
                )
            except Diverged as exc:
                # Only remedies not in use already: onecycle is the default schedule.
                tries = [f"lower train.lr (e.g. {exc.lr / 10:.3g})"]
                tries += ["set train.grad_clip (e.g. 1.0)"] if cfg.grad_clip is None else []
                tries += ["use train.scheduler onecycle"] if cfg.scheduler != "onecycle" else []
                raise PipelineError(
                    f"train: the training loss became NaN or infinite at epoch {epoch}, step "
                    f"{exc.step} (learning rate {exc.lr:.3g}): training diverged; "
                    + "; ".join(tries)
                ) from None
        opt.after_epoch()
        val_loss, val_acc = validate(model if ema is None else ema.module, data, rt, world)
        result = EpochResult(
            epoch, train_loss, train_acc, val_loss, val_acc, lr, time.perf_counter() - start
        )
        state = _advance(state, result, model, opt, generator, cfg, ema)
        if on_epoch(result, state):
            break
    assert state.best_state is not None
    model.load_state_dict(state.best_state)
    return state
