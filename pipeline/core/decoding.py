"""The `download` stage's work for data.dataset folder: your pictures decoded once into data/raw.

The decoding itself (scanning, carving off a test split, decoding in parallel) is core.folders';
this module applies it to the parameters and replaces data/raw only when it succeeds. (A built-in
dataset's files are fetched instead: core.originals.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.core import atomic, datasets, folders, paths, transfer
from pipeline.core.params import Params


def decode_folder(
    params: Params, workers: int, progress: Callable[[int, int, float], None]
) -> dict[str, Any]:
    """The `download` stage's work for data.dataset folder: data.folder's pictures decoded
    (core.folders) into data/raw/folder, replaced on success; returns the report (counts, skips,
    duplicates, digest)."""
    data, spec = params.data, datasets.get("folder")
    layout = folders.carve(folders.scan(paths.project_root() / data.folder), data.test_size)
    with atomic.directory(paths.RAW) as tmp:
        return folders.decode(
            layout,
            transfer.picture_channels(params),
            transfer.picture_size(params),
            tmp / spec.folder,
            workers,
            progress,
        )
