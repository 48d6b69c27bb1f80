"""Per-channel normalisation statistics of the fitting images, computed exactly from uint8 pixel
histograms.

NumPy only, like the reading and the split: the normalization-stats stage never loads torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import atomic, datasets, folders, paths, splits
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params


@dataclass(frozen=True)
class ChannelStats:
    """Mean and standard deviation of each channel, on the 0–1 pixel scale."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int  # images the statistics were computed from


def compute(params: Params) -> ChannelStats:
    """The `normalization-stats` stage's work: statistics of the images train will fit on, into
    data/stats.json."""
    spec = datasets.describe(params.data.dataset, paths.RAW)
    images, labels = datasets.read_split(spec, paths.RAW, train=True)
    if (
        datasets.read_validation(spec, paths.RAW) is not None
    ):  # the folder's own val/: every training picture fits
        fit_idx = splits.limited(np.arange(len(labels)), params.seed, params.data.limit)
    else:
        fit_idx, _ = splits.split_indices(
            labels,
            params.data.val_size,
            params.seed,
            params.data.limit,
            folders.class_paths(paths.RAW / spec.folder, "train") if spec.from_folder else None,
        )
    result = channel_stats(datasets.PagedImages(images) if spec.from_folder else images, fit_idx)
    save(paths.STATS, result, spec.name)
    return result


def channel_stats(images: Any, indices: Any, chunk_pixels: int = 1 << 24) -> ChannelStats:
    """Statistics of `images[indices]` (uint8, N×C×H×W; arrays, tensors or datasets.PagedImages),
    streamed in chunks of about `chunk_pixels` pixels per channel. A 256-bin histogram per channel
    is all that is kept, so memory stays at one uint8 chunk (and np.bincount's int64 copy of one
    channel of it) and the sums are exact integers: the result does not depend on chunk size or
    summation order. Raises TypeError for images that are not uint8."""
    indices = np.asarray(indices)
    channels = images.shape[1]
    chunk = max(1, chunk_pixels // int(np.prod(images.shape[2:])))
    hist = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(indices), chunk):
        block = np.asarray(images[indices[start : start + chunk]])
        if block.dtype != np.uint8:
            raise TypeError(f"expected uint8 images, got {block.dtype}")
        for c in range(channels):
            hist[c] += np.bincount(block[:, c].reshape(-1), minlength=256)
    means, stds = [], []
    for c in range(channels):
        # Python integers: exact, where int64 sums of squares could overflow on a large dataset.
        n = int(hist[c].sum())
        s = sum(int(h) * v for v, h in enumerate(hist[c].tolist()))
        ss = sum(int(h) * v * v for v, h in enumerate(hist[c].tolist()))
        means.append(s / n / 255.0)
        stds.append(math.sqrt(max(ss * n - s * s, 0)) / n / 255.0)
    return ChannelStats(mean=tuple(means), std=tuple(stds), count=len(indices))


def save(path: Path, stats: ChannelStats, dataset: str) -> None:
    """Write data/stats.json atomically."""
    atomic.write_json(
        path,
        {
            "dataset": dataset,
            "mean": list(stats.mean),
            "std": list(stats.std),
            "count": stats.count,
        },
    )


def load(path: Path, dataset: str, channels: int) -> ChannelStats:
    """Read data/stats.json, checking it belongs to `dataset` and can normalise: one finite mean and
    one finite, positive std per channel (a zero std would train on NaNs without a word)."""
    path = Path(path)
    rerun = "rerun the normalization-stats stage (dvc repro -f normalization-stats)"
    try:
        raw = json.loads(path.read_text())
        stats = ChannelStats(
            mean=tuple(map(float, raw["mean"])),
            std=tuple(map(float, raw["std"])),
            count=int(raw["count"]),
        )
        name = raw["dataset"]
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run the normalization-stats stage first") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise PipelineError(f"{path}: not a statistics file; {rerun}") from None
    if name != dataset:
        raise PipelineError(
            f"{path}: statistics are for {name}, not data.dataset={dataset}; {rerun}"
        )
    if len(stats.mean) != channels or len(stats.std) != channels:
        raise PipelineError(
            f"{path}: {len(stats.mean)} means and {len(stats.std)} stds for {channels} channel(s); "
            f"{rerun}"
        )
    if not all(math.isfinite(m) for m in stats.mean) or not all(
        math.isfinite(s) and s > 0 for s in stats.std
    ):
        raise PipelineError(
            f"{path}: every mean must be finite and every std finite and > 0; {rerun}"
        )
    return stats
