"""The deterministic, stratified carving of a validation set out of the training split."""
from __future__ import annotations

import torch

from pipeline.core.errors import PipelineError


def split_indices(
    labels: torch.Tensor, val_size: int, seed: int, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, validation), each sorted ascending.

    Every class gets its share of the validation set (largest-remainder rounding), chosen at random
    with a generator seeded by `seed`, so the same seed always gives the same split. `limit` then
    caps the fitting part with a seeded random subset; the validation set does not depend on it.
    """
    n = len(labels)
    if val_size >= n:
        raise PipelineError(f"data.val_size must be smaller than the {n} training images, got {val_size}")
    generator = torch.Generator().manual_seed(seed)
    counts = torch.bincount(labels)
    exact = counts.double() * val_size / n
    quota = exact.floor().long()
    remainder_order = torch.argsort(exact - quota.double(), descending=True, stable=True)
    quota[remainder_order[: val_size - int(quota.sum())]] += 1

    perm = torch.randperm(n, generator=generator)
    grouped = perm[torch.argsort(labels[perm], stable=True)]  # by class, random within a class
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts.repeat_interleave(counts)
    is_val = rank < quota.repeat_interleave(counts)
    val = grouped[is_val].sort().values
    fit = grouped[~is_val]
    if limit is not None and limit < len(fit):
        fit = fit[torch.randperm(len(fit), generator=generator)[:limit]]
    return fit.sort().values, val
