"""Which pictures are held out: the deterministic, stratified carving of a validation set out of the
training split, and the hashed assignment of a folder's pictures to test/train and fit/validation.

NumPy only: the normalization-stats stage needs the split without loading torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.core.errors import PipelineError

# A folder's validation set: at most this fraction of its training pictures, whatever val_size asks.
FOLDER_VAL_CAP = 0.2


def unit(seed: int, role: str, key: str) -> float:
    """A number in [0, 1) fixed by (`seed`, `role`, `key`) alone, uniform over keys: the first 8
    bytes of SHA-256 of the three, as a fraction of 2**64. The same on every platform and Python."""
    digest = hashlib.sha256(f"{role}\0{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hashed(keys: Sequence[str], labels: Any, fraction: float, seed: int, role: str) -> np.ndarray:
    """Which of the items (`keys[i]` names item i, `labels` its int class, length N) are held out:
    bool N, True where unit(seed, role, key) < `fraction`. Each item's fate depends on its own key
    only, so adding, removing or relabelling items moves no other item. Stratified approximately
    (each class holds out about `fraction` of its items), and exactly in one respect: every class
    keeps at least one item (its highest unit), and a class of at least two items holds out at
    least one (its lowest unit) — the one place where another item can move, when a class that had
    none held out (or all) gains one."""
    u = np.array([unit(seed, role, key) for key in keys], dtype=np.float64)
    out = u < fraction
    labels = np.asarray(labels, dtype=np.int64)
    order = np.lexsort((u, labels))  # by class, then by unit
    ends = np.flatnonzero(np.diff(labels[order], append=np.inf))  # each class's last position
    for start, end in zip(np.r_[0, ends[:-1] + 1], ends + 1, strict=True):
        rows = order[start:end]
        if len(rows) >= 2 and not out[rows].any():
            out[rows[0]] = True
        if out[rows].all():
            out[rows[-1]] = False
    return out


def split_indices(
    labels: Any,
    val_size: int,
    seed: int,
    limit: int | None = None,
    keys: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, validation) into `labels` (an int array or tensor, N), each int64 and sorted
    ascending.

    A built-in data set (`keys` None): the validation set holds `val_size` images; every class gets
    its share of it (largest-remainder rounding), chosen at random with a generator seeded by
    `seed` (NumPy's PCG64, the same stream on every platform), so the same seed always gives the
    same split.

    A folder of pictures (`keys[i]` names picture i by its path inside its class folder): each
    picture is in validation when its hash (`hashed`, role "val") falls below
    min(val_size / N, FOLDER_VAL_CAP), so adding, removing or relabelling pictures moves no other
    picture between fitting and validation (while val_size / N stays above the cap, as for folders
    of up to 5 × val_size pictures); the size is val_size / N of them on average, not exactly.

    `limit` then caps the fitting part with a random subset seeded by `seed`; the validation set
    does not depend on it. Raises PipelineError for fewer than two images, or for a `val_size` of a
    built-in data set that leaves nothing to fit.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if n < 2:
        raise PipelineError(
            f"data: {n} training image(s); fitting and validation need at least two"
        )
    if keys is not None:
        is_val = hashed(keys, labels, min(val_size / n, FOLDER_VAL_CAP), seed, "val")
        if not is_val.any():  # every class has a single picture: validate on one all the same
            is_val[int(np.argmin([unit(seed, "val", key) for key in keys]))] = True
        return limited(np.flatnonzero(~is_val), seed, limit), np.flatnonzero(is_val)
    if val_size >= n:
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
