"""The rules of params.yaml that no single field states: values that must agree with each other
(train.portable and train.threads, train.batch_size and train.processes, data.image_size and a
built-in dataset, ...), and keys since replaced (train.pretrained).

Called by core.params after each value is checked against its own field; like core.params, this
module imports neither torch nor core.models nor core.optim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.core import datasets, transfer
from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.core.params import Params


def without_pretrained(raw: Any, source: str) -> Any:
    """`raw` without train.pretrained, which train.weights replaced: false (what every earlier
    params.yaml holds, and their runs logged) is dropped, true refused in one line naming the new
    key."""
    train = raw.get("train") if isinstance(raw, dict) else None
    if not isinstance(train, dict) or "pretrained" not in train:
        return raw
    if train["pretrained"] is not False:
        raise PipelineError(
            f"{source}: train.pretrained was replaced by train.weights; write train.weights: "
            "imagenet (torchvision's ImageNet weights) and remove train.pretrained"
        )
    return {**raw, "train": {k: v for k, v in train.items() if k != "pretrained"}}


def check_combinations(params: Params, source: str) -> None:
    """Refuse values that each pass their own field but not together (PipelineError naming
    the key, `source` the file)."""
    train = params.train
    if train.portable and train.threads == 0:
        raise PipelineError(
            f"{source}: train.threads must be >= 1 with train.portable (thread count changes sums)"
        )
    if train.portable and (train.precision == "bf16" or train.device == "cuda"):
        key = "train.precision" if train.precision == "bf16" else "train.device"
        raise PipelineError(
            f"{source}: {key} must not be {getattr(train, key.split('.')[1])} with train.portable "
            "(CPU fp32 only)"
        )
    if isinstance(train.batch_size, int) and train.batch_size < train.processes:
        raise PipelineError(
            f"{source}: train.batch_size must be >= train.processes (each process takes part of "
            "every batch), "
            f"got {train.batch_size} < {train.processes}"
        )
    if len(train.betas) != 2:
        raise PipelineError(
            f"{source}: train.betas must be a list of two numbers >= 0 and < 1, got "
            f"{list(train.betas)}"
        )
    if train.loss == "nll" and (train.mixup_alpha or train.cutmix_alpha):
        key = "train.mixup_alpha" if train.mixup_alpha else "train.cutmix_alpha"
        raise PipelineError(
            f"{source}: {key} mixes labels into soft targets, which train.loss nll does not take; "
            "use train.loss cross_entropy"
        )
    data = params.data
    if data.channels == 2:
        raise PipelineError(f"{source}: data.channels must be 1, 3 or null, got 2")
    builtin = datasets.get(data.dataset)
    for key, own in (("image_size", builtin.image_size), ("channels", builtin.channels)):
        if not builtin.from_folder and getattr(data, key) not in (None, own):
            raise PipelineError(
                f"{source}: data.{key} applies to data.dataset folder; {data.dataset} has its own "
                f"({own}), so leave it null, got {getattr(data, key)}"
            )
    transfer.check(params, source)
    if params.data.val_size < train.processes:
        raise PipelineError(
            f"{source}: data.val_size must be >= train.processes (each process scores part of the "
            "validation "
            f"images), got {params.data.val_size} < {train.processes}"
        )
