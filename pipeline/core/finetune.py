"""Fine-tuning and weight averaging for the training loop, each switched on by its parameter.

The freeze schedule (train.freeze_epochs, train.freeze_backbone): while frozen, only the head (the
network's last nn.Linear) trains, and the backbone's batch-norm layers keep their statistics.
Whether an epoch is frozen follows from its number alone: a resumed run freezes as an uninterrupted
one.
The optimizer's parameter groups (train.backbone_lr_scale), MixUp and CutMix with soft targets
(train.mixup_alpha, train.cutmix_alpha) and the exponential moving average of the weights
(train.ema_decay) live here too. torch is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.optim.swa_utils import AveragedModel

    from pipeline.core.params import TrainParams

# (uint8 images N×C×H×W, int64 labels N) -> (float images in [0, 1], float soft targets N×classes)
Mixer = Callable[["torch.Tensor", "torch.Tensor"], tuple["torch.Tensor", "torch.Tensor"]]


def head(net: nn.Module) -> nn.Linear:
    """The head of `net`: its last nn.Linear in module order (the classifier of every
    architecture here). Raises PipelineError when `net` holds none."""
    from torch import nn

    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise PipelineError("train.freeze_epochs: the network has no linear layer to train alone")
    return linears[-1]


def head_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The head's weight and bias."""
    return list(head(net).parameters())


def backbone_parameters(net: nn.Module) -> list[nn.Parameter]:
    """Every parameter of `net` but the head's, in module order."""
    own = {id(p) for p in head_parameters(net)}
    return [p for p in net.parameters() if id(p) not in own]


def frozen(cfg: TrainParams, epoch: int) -> bool:
    """Whether epoch `epoch` (counted from 1) trains the head alone."""
    return cfg.freeze_backbone or epoch <= cfg.freeze_epochs


def freezes(cfg: TrainParams) -> bool:
    """Whether any epoch of the run trains the head alone."""
    return cfg.freeze_backbone or cfg.freeze_epochs > 0


def schedule_line(cfg: TrainParams) -> str | None:
    """The line saying what the fine-tuning schedule will do, or None when there is none."""
    parts = []
    if cfg.freeze_backbone:
        parts.append("the head alone in every epoch (train.freeze_backbone)")
    elif cfg.freeze_epochs > 0:
        n = cfg.freeze_epochs
        parts.append(f"the head alone for {n} epoch{'s' if n > 1 else ''}, then every layer")
    if cfg.backbone_lr_scale != 1 and not cfg.freeze_backbone:
        parts.append(f"the backbone at train.lr × {cfg.backbone_lr_scale:g}")
    return f"fine-tuning: {'; '.join(parts)}" if parts else None


def set_frozen(net: nn.Module, is_frozen: bool) -> None:
    """Let the backbone's parameters take gradients or not (the head's always do)."""
    for p in backbone_parameters(net):
        p.requires_grad_(not is_frozen)


def freeze_batch_norm(net: nn.Module) -> None:
    """Put every batch-norm layer of `net` (all in the backbone: the head is linear) in eval mode:
    its running statistics stay as they are while the backbone is frozen. Call after
    `net.train()`."""
    from torch import nn

    batch_norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    for m in net.modules():
        if isinstance(m, batch_norms):
            m.eval()


def parameter_groups(net: nn.Module, cfg: TrainParams) -> list[Any]:
    """What the optimizer steps: the parameters that take gradients, as one list when
    train.backbone_lr_scale is 1 (as before it existed); else two groups, the head's at train.lr
    first (the rate a run reports), the backbone's at train.lr × the scale."""
    if cfg.backbone_lr_scale == 1:
        return [p for p in net.parameters() if p.requires_grad]
    # Frozen ones too: they take gradients once the schedule unfreezes them.
    return [
        {"params": head_parameters(net), "lr": cfg.lr},
        {"params": backbone_parameters(net), "lr": cfg.lr * cfg.backbone_lr_scale},
    ]


def mixer(cfg: TrainParams, num_classes: int) -> Mixer | None:
    """torchvision's MixUp, CutMix, or a random choice of the two per batch, as train.mixup_alpha
    and train.cutmix_alpha ask; None when both are 0. It draws from torch's global generator:
    call it under `seeded`."""
    if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0:
        return None  # before torchvision, a fifth of a second of every run, is imported
    from torchvision.transforms import v2

    chosen = [
        kind(alpha=alpha, num_classes=num_classes)
        for kind, alpha in ((v2.MixUp, cfg.mixup_alpha), (v2.CutMix, cfg.cutmix_alpha))
        if alpha > 0
    ]
    transform = chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)

    def mix(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Floats: a blend of uint8 pictures would be rounded.
        return transform(x.float() / 255, y)

    return mix


def averaged(net: nn.Module, cfg: TrainParams) -> AveragedModel | None:
    """An exponential moving average of `net`'s weights and buffers (batch-norm statistics) at
    train.ema_decay per step, or None when it is off."""
    if cfg.ema_decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)


def averaged_weights(ema: AveragedModel) -> dict[str, torch.Tensor]:
    """The averaged network's state dict (the keys of the network it averages)."""
    return ema.module.state_dict()
