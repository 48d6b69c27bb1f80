"""The training loop: whole splits as uint8 tensors, index-based shuffling, early stopping.

Images stay uint8 until a batch is drawn; the model normalises each batch itself. This is the
fast path measured in DEVELOPERS.md (no per-sample transforms, no DataLoader).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, ContextManager

import torch
import torch.nn.functional as F
from tqdm import tqdm
from torch import nn

from pipeline.params import TrainParams


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed."""

    device: torch.device
    autocast_dtype: torch.dtype | None  # None = plain fp32
    channels_last: bool

    def autocast(self) -> ContextManager[Any]:
        """Autocast context for forward passes (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


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
class FitResult:
    history: list[EpochResult]
    best_epoch: int
    stopped_early: bool

    @property
    def best(self) -> EpochResult:
        return self.history[self.best_epoch - 1]


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively (AVX-512 BF16/AMX on the CPU, Ampere+ on CUDA)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels.

    With this, a fixed thread count and the explicit generators used for splits and shuffling, the
    same code, parameters and data on the same machine give byte-identical weights.
    """
    import os
    import random

    import numpy as np

    # cuBLAS needs this before CUDA initialises to have deterministic GEMMs (ignored on the CPU).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def make_runtime(cfg: TrainParams) -> Runtime:
    """Pick device, threads and precision from the parameters and what this machine has."""
    from pipeline.errors import PipelineError

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise PipelineError("train.device is cuda, but no CUDA device is available")
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dtype: torch.dtype | None = None
    if cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported(device)):
        dtype = torch.bfloat16
    return Runtime(device=device, autocast_dtype=dtype, channels_last=cfg.channels_last)


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


def make_optimizer(model: nn.Module, cfg: TrainParams) -> torch.optim.Optimizer:
    """The optimizer named by train.optimizer, over the parameters that are not frozen."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainParams, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The schedule named by train.scheduler (None for a constant rate); see `per_batch`."""
    sched = torch.optim.lr_scheduler
    if cfg.scheduler == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch)
    if cfg.scheduler == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return None


def per_batch(cfg: TrainParams) -> bool:
    """Whether the schedule steps after every batch (onecycle) rather than every epoch."""
    return cfg.scheduler == "onecycle"


def loss_fn(cfg: TrainParams) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy on logits, or the tutorials' NLL on log-softmax outputs (the same maths)."""
    if cfg.loss == "nll":
        return lambda logits, y: F.nll_loss(F.log_softmax(logits, dim=1), y)
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4 px zero padding and random horizontal flip, per image, on a uint8 batch."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # n×h
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)  # n×w
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # n×h×w×c
    return out.permute(0, 3, 1, 2).contiguous()


def _to_device(x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(rt.device, non_blocking=True)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(rt.device, non_blocking=True)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    batch_iter: Iterator[tuple[torch.Tensor, torch.Tensor]],
    rt: Runtime,
    cfg: TrainParams,
    progress: Any = None,
) -> tuple[float, float]:
    """One pass over the batches; returns (mean loss, accuracy). `progress` is an optional tqdm bar."""
    criterion = loss_fn(cfg)
    model.train()
    total_loss = torch.zeros((), dtype=torch.float64, device=rt.device)
    correct = torch.zeros((), dtype=torch.int64, device=rt.device)
    seen = 0
    for x, y in batch_iter:
        x, y = _to_device(x, y, rt)
        with rt.autocast():
            logits = model(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if scheduler is not None and per_batch(cfg):
            scheduler.step()
        # Accumulate on the device: no host sync per batch.
        total_loss += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if progress is not None:
            progress.update(1)
            if progress.n % 20 == 0:  # reading the totals syncs the device; not every batch
                progress.set_postfix(loss=f"{float(total_loss) / seen:.4f}", acc=f"{int(correct) / seen:.4f}")
    return float(total_loss) / seen, int(correct) / seen


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int, rt: Runtime) -> torch.Tensor:
    """Logits (float32, on the CPU) for every image, in order."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(rt.device, non_blocking=True)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    fit_idx: torch.Tensor,
    val_idx: torch.Tensor,
    cfg: TrainParams,
    rt: Runtime,
    seed: int,
    on_epoch: Callable[[EpochResult], None] = lambda r: None,
    augment_batches: bool = False,
    resume: dict[str, Any] | None = None,
    on_checkpoint: Callable[[dict[str, Any]], None] = lambda state: None,
    progress: bool = False,
) -> FitResult:
    """Train with validation every epoch and early stopping; the model ends with its best weights.

    After every epoch `on_checkpoint` gets the full training state (weights, optimizer, scheduler,
    RNG states, history, best so far); passing such a state back as `resume` continues exactly where
    it left off, so an interrupted and resumed run ends with the same weights as an uninterrupted one.
    """
    generator = torch.Generator().manual_seed(seed)
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    images = images.to(rt.device)  # resident on the device: no per-batch host→device copies
    labels = labels.to(rt.device)
    val_images, val_labels = images[val_idx.to(rt.device)], labels[val_idx.to(rt.device)]
    fit_idx = fit_idx.to(rt.device)

    steps = max(1, len(fit_idx) // cfg.batch_size)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    history: list[EpochResult] = []
    best_acc, best_epoch, best_state = -math.inf, 0, None
    first_epoch = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["torch_rng"])
        generator.set_state(resume["generator"])
        history = [EpochResult(**row) for row in resume["history"]]
        best_acc, best_epoch, best_state = resume["best_acc"], resume["best_epoch"], resume["best_state"]
        first_epoch = resume["epoch"] + 1
    for epoch in range(first_epoch, cfg.epochs + 1):
        if best_state is not None and cfg.patience is not None and epoch - 1 - best_epoch >= cfg.patience:
            break  # resumed after the epoch that triggered early stopping
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        shuffled = fit_idx[torch.randperm(len(fit_idx), generator=generator).to(rt.device)]
        batch_iter = batches(images, labels, shuffled, cfg.batch_size, drop_last=True)
        if augment_batches:
            batch_iter = ((augment(x, generator), y) for x, y in batch_iter)
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not progress)
        with bar:
            train_loss, train_acc = train_one_epoch(model, optimizer, scheduler, batch_iter, rt, cfg, bar if progress else None)
        if scheduler is not None and not per_batch(cfg):
            scheduler.step()
        logits = predict(model, val_images, 1024, rt)
        val_loss = float(F.cross_entropy(logits, val_labels.cpu()))
        val_acc = int((logits.argmax(1) == val_labels.cpu()).sum()) / len(val_labels)
        result = EpochResult(epoch, train_loss, train_acc, val_loss, val_acc, lr, time.perf_counter() - start)
        history.append(result)
        if val_acc > best_acc + cfg.min_delta or best_state is None:
            best_acc, best_epoch = val_acc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        on_checkpoint(
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "torch_rng": torch.get_rng_state(),
                "generator": generator.get_state(),
                "history": [asdict(r) for r in history],
                "best_acc": best_acc,
                "best_epoch": best_epoch,
                "best_state": best_state,
            }
        )
        on_epoch(result)
        if cfg.patience is not None and epoch - best_epoch >= cfg.patience:
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    return FitResult(history=history, best_epoch=best_epoch, stopped_early=len(history) < cfg.epochs)
