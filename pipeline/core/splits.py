"""The deterministic, stratified carving of a validation set out of the training split.

NumPy only: the normalization-stats stage needs the split without loading torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.errors import PipelineError


def split_indices(
    labels: Any, val_size: int, seed: int, limit: int | None = None, folder: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, validation) into `labels` (an int array or tensor), each int64 and sorted
    ascending.

    The validation set holds `val_size` images; for a `folder` of pictures, at most a fifth of them
    (so the default suits a folder of a few hundred pictures). Every class gets its share of it
    (largest-remainder rounding), chosen at random with a generator seeded by `seed` (NumPy's PCG64,
    the same stream on every platform), so the same seed always gives the same split. `limit` then
    caps the fitting part with a seeded random subset; the validation set does not depend on it.
    Raises PipelineError for fewer than two images, or for a `val_size` of a built-in data set that
    leaves nothing to fit.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if n < 2:
        raise PipelineError(
            f"data: {n} training image(s); fitting and validation need at least two"
        )
    if folder:
        val_size = max(1, min(val_size, n // 5))
    elif val_size >= n:
        raise PipelineError(
            f"data.val_size must be smaller than the {n} training images, got {val_size}"
        )
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
    return limited(fit, rng, limit), val


def limited(indices: np.ndarray, seed: int | np.random.Generator, limit: int | None) -> np.ndarray:
    """`indices` sorted, capped at `limit` by a random subset drawn with `seed` (or that
    generator)."""
    rng = (
        seed
        if isinstance(seed, np.random.Generator)
        else np.random.Generator(np.random.PCG64(seed))
    )
    if limit is not None and limit < len(indices):
        indices = indices[rng.permutation(len(indices))[:limit]]
    return np.sort(indices)
