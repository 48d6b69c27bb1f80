"""The `download` stage's work for data.dataset folder: your pictures decoded once into data/raw.

The decoding itself (scanning, carving off a test split, decoding in parallel) is core.folders';
this module applies it to the parameters and replaces data/raw only when it succeeds. (A built-in
dataset's files are fetched instead: core.originals.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fnmatch import fnmatch
from pathlib import PurePosixPath
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


def is_junk(rel: str) -> bool:
    """Whether a skipped path (relative, with /) is junk no one meant as a picture: in or of a
    folder of folders.JUNK_FOLDERS, named like folders.JUNK_FILES, or hidden (any part starting with
    a dot)."""
    parts = PurePosixPath(rel).parts
    return any(p in folders.JUNK_FOLDERS or p.startswith(".") for p in parts) or any(
        fnmatch(parts[-1], pattern) for pattern in folders.JUNK_FILES
    )


def skipped_summary(skipped: Sequence[dict[str, str]]) -> str | None:
    """What the download stage says of report.json's `skipped` ({path, reason}, sorted by path), the
    skips that matter first: picture files that could not be read, then other files that are no
    pictures (each counted, the first named with its reason), then junk (.DS_Store, hidden files,
    __MACOSX/, ...) only counted. None when everything skipped is junk: the docs promise it is
    ignored."""
    unread = [s for s in skipped if s["reason"] not in folders.LISTED]
    junk = [s for s in skipped if s not in unread and is_junk(s["path"])]
    other = [s for s in skipped if s not in unread and s not in junk]
    if not unread and not other:
        return None
    said = []
    for kind, found in (("picture(s) that could not be read", unread), ("other file(s)", other)):
        if found:
            said.append(f"{len(found)} {kind} (first: {found[0]['path']}, {found[0]['reason']})")
    if junk:
        said.append(f"{len(junk)} junk or hidden file(s) such as .DS_Store")
    return "skipped " + ", ".join(said)
