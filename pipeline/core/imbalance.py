"""Class imbalance: the loss's per-class weights (train.class_weights), the class-balanced draw of
an epoch's fitting images (data.sampler) and the warning the download stage gives.

Both remedies act on the fitting images only (never the validation or test pictures). Weights
follow scikit-learn's definition of "balanced" (compute_class_weight: n_samples / (n_classes ×
the class's count)), so a class k times rarer weighs k times more; the balanced sampler draws as
many indices per epoch as there are fitting images, with replacement, each picture with
probability 1 / (its class's count) – torch's WeightedRandomSampler, done on index tensors from
the run's seeded generator, so the loop keeps its tensor batches and a rerun draws the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    import torch

# The largest class this many times the smallest: the download stage suggests the two remedies.
WARN_RATIO = 10


def check_names(setting: str | Mapping[str, float], class_names: Sequence[str]) -> None:
    """Refuse a train.class_weights mapping that names a class the data lacks, or weighs every
    class 0 (the loss would be 0/0): PipelineError naming the parameter and the valid names."""
    if isinstance(setting, str):
        return
    unknown = [name for name in setting if name not in class_names]
    if unknown:
        raise PipelineError(
            f"train.class_weights: no class {unknown[0]!r} in the data (its classes: "
            f"{', '.join(class_names)})"
        )
    if all(setting.get(name, 1.0) == 0 for name in class_names):
        raise PipelineError("train.class_weights: every class weighs 0; give one a weight > 0")


def class_weights(
    setting: str | Mapping[str, float], class_names: Sequence[str], fit_labels: np.ndarray
) -> torch.Tensor | None:
    """The loss's weights, float32 (classes,), for train.class_weights; None for `none` (the
    unweighted loss, bit for bit). `fit_labels` (int64 N) are the labels of the fitting images,
    which `balanced` counts. Raises PipelineError for a class with no fitting image under
    `balanced`, or a mapping `check_names` refuses."""
    import torch

    if setting == "none":
        return None
    if isinstance(setting, str):  # balanced
        from sklearn.utils.class_weight import compute_class_weight

        counts = np.bincount(fit_labels, minlength=len(class_names))
        if not counts.all():
            missing = class_names[int(np.flatnonzero(counts == 0)[0])]
            raise PipelineError(
                f"train.class_weights: balanced needs every class among the fitting images; "
                f"{missing!r} has none (raise data.limit or give weights by name)"
            )
        weights = compute_class_weight(
            "balanced", classes=np.arange(len(class_names)), y=fit_labels
        )
        return torch.tensor(weights, dtype=torch.float32)
    check_names(setting, class_names)
    return torch.tensor([setting.get(name, 1.0) for name in class_names], dtype=torch.float32)


def sample_weights(fit_labels: torch.Tensor) -> torch.Tensor:
    """Per fitting image (int64 labels N), the float64 weight 1 / (its class's count): drawn with
    these, every class present is equally likely (torch's WeightedRandomSampler's `weights`)."""
    import torch

    counts = torch.bincount(fit_labels.cpu())
    return 1.0 / counts[fit_labels.cpu()].double()


def epoch_order(
    count: int, weights: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """Positions (int64, `count` of them) into the fitting images for one epoch: a permutation
    (data.sampler shuffle), or `count` draws with replacement by `weights` (balanced), as
    WeightedRandomSampler draws them (torch.multinomial on the generator)."""
    import torch

    if weights is None:
        return torch.randperm(count, generator=generator)
    return torch.multinomial(weights, count, replacement=True, generator=generator)


def imbalance_warning(per_class: Mapping[str, int]) -> str | None:
    """One line when the largest class holds at least WARN_RATIO times the pictures of the
    smallest, naming both and the two remedies; None otherwise (or for one class)."""
    if len(per_class) < 2:
        return None
    largest = max(per_class, key=lambda name: per_class[name])
    smallest = min(per_class, key=lambda name: per_class[name])
    big, small = per_class[largest], per_class[smallest]
    if big < WARN_RATIO * small:
        return None
    ratio = f"{big / small:.0f}×" if small else "all"
    return (
        f"warning: class {largest!r} has {big:,} training pictures, {ratio} the {small:,} of "
        f"{smallest!r}: consider train.class_weights: balanced or data.sampler: balanced"
    )
