"""The deterministic, stratified carving of a validation set out of the training split.

NumPy only: the normalization-stats stage needs the split without loading torch.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.errors import PipelineError


def split_indices(labels: Any, val_size: int, seed: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, validation) into `labels` (an int array or tensor), each int64 and sorted ascending.

    Every class gets its share of the validation set (largest-remainder rounding), chosen at random
    with a generator seeded by `seed` (NumPy's PCG64, the same stream on every platform), so the same
    seed always gives the same split. `limit` then caps the fitting part with a seeded random subset;
    the validation set does not depend on it.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if val_size >= n:
        raise PipelineError(f"data.val_size must be smaller than the {n} training images, got {val_size}")
    rng = np.random.Generator(np.random.PCG64(seed))
    counts = np.bincount(labels)
    exact = counts * val_size / n
    quota = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - quota), kind="stable")
    quota[remainder_order[: val_size - int(quota.sum())]] += 1

    perm = rng.permutation(n)
    grouped = perm[np.argsort(labels[perm], kind="stable")]  # by class, random within a class
    starts = np.cumsum(counts) - counts
    rank = np.arange(n) - np.repeat(starts, counts)
    is_val = rank < np.repeat(quota, counts)
    val = np.sort(grouped[is_val])
    fit = grouped[~is_val]
    if limit is not None and limit < len(fit):
        fit = fit[rng.permutation(len(fit))[:limit]]
    return np.sort(fit), val
