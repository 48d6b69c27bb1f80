"""Users' own pictures (an ImageFolder tree): finding them, decoding them once into uint8 arrays,
reading them back.

`scan` finds the classes and pictures of `data.folder`; `decode` turns every picture into the
model's input once (core.images.read), in parallel, into files later stages memory-map; `read_split`
and `drop_pages` read them back with memory bounded by what is touched, not by the data set.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import mmap
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import atomic
from pipeline.core.errors import PipelineError, first_line
from pipeline.core.images import SUFFIXES, ImageError, read

LAYOUT = (
    "expected one subfolder per class, or train/ and test/ (optionally val/) each holding one "
    "subfolder per class"
)
# fork copies a caller's torch (OpenMP, CUDA) or MLflow threads' locks, which a child can hang on;
# spawn re-imports the caller's script per worker (seconds when it imports torch); forkserver pays
# that once, for its first pool.
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


@dataclass(frozen=True)
class Layout:
    """What `scan` found: classes (sorted, as torchvision's find_classes), pictures (path, class),
    skips (path, why)."""

    folder: Path
    classes: tuple[str, ...]
    splits: dict[
        str, list[tuple[Path, int]]
    ]  # "train", "val", "test" as the folder has them, or just "all"
    skipped: list[tuple[Path, str]]


def _listdir(
    path: Path, root: Path, skipped: list[tuple[Path, str]], only_folders: bool = False
) -> tuple[list[Path], list[Path]]:
    """(folders, picture files) directly in `path`, sorted, the rest in `skipped`; refuses a
    symbolic link pointing outside `root` (those inside are followed), and pictures where there
    should be `only_folders`."""
    folders, files = [], []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        p, hidden = Path(entry.path), entry.name.startswith(".")
        if entry.is_symlink() and not p.resolve().is_relative_to(root):
            raise PipelineError(
                f"{p}: symbolic link to {p.resolve()}, outside data.folder {root}; copy it in "
                "instead"
            )
        is_dir, picture = entry.is_dir(), p.suffix.lower() in SUFFIXES
        if not hidden and (is_dir or (picture and entry.is_file())):
            (folders if is_dir else files).append(p)
        else:  # a hidden "picture" is e.g. macOS's ._photo.jpg, which holds none
            skipped.append(
                (
                    p,
                    "hidden folder"
                    if is_dir
                    else "not a picture file"
                    if not picture
                    else "hidden file"
                    if hidden
                    else "not a regular file",
                )
            )
    if only_folders and files:
        raise PipelineError(f"{files[0]}: picture outside a class folder; {LAYOUT}")
    return folders, files


def _pictures(
    path: Path, root: Path, skipped: list[tuple[Path, str]], above: frozenset[Path] = frozenset()
) -> list[Path]:
    """Every picture file at any depth below `path`, sorted by path."""
    here = path.resolve()
    if here in above:
        raise PipelineError(f"{path}: symbolic link loop (it leads back to {here})")
    folders, files = _listdir(path, root, skipped)
    return sorted(
        files + [p for folder in folders for p in _pictures(folder, root, skipped, above | {here})]
    )


def scan(folder: Path) -> Layout:
    """The pictures of `folder`/<class>/… or `folder`/{train,test[,val]}/<class>/… (any depth below
    a class). Raises PipelineError (one line) for a missing folder, fewer than two classes, a
    picture outside a class folder, split folders whose classes differ, a symbolic link that points
    outside `folder` or loops."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"data.folder {folder}: no such folder; {LAYOUT}")
    root, skipped = folder.resolve(), []
    tops = {p.name: p for p in _listdir(folder, root, skipped, only_folders=True)[0]}
    per_split = {"all": tops}
    if "train" in tops or "test" in tops:
        if set(tops) - {"train", "val", "test"} or not {"train", "test"} <= set(tops):
            raise PipelineError(
                f"data.folder {folder}: holds {', '.join(f'{n}/' for n in tops)}; {LAYOUT}"
            )
        per_split = {
            s: {p.name: p for p in _listdir(tops[s], root, skipped, only_folders=True)[0]}
            for s in ("train", "val", "test")
            if s in tops
        }
    first = next(iter(per_split))
    classes = tuple(sorted(per_split[first]))
    if len(classes) < 2:
        raise PipelineError(
            f"data.folder {folder}: {len(classes)} class folder(s); {LAYOUT}, at least two classes"
        )
    for split, found in per_split.items():
        for name in sorted(set(classes) ^ set(found)):
            where, lacking = (split, first) if name in found else (first, split)
            raise PipelineError(
                f"data.folder {folder}: class {name!r} is in {where}/ but not in {lacking}/; "
                f"{LAYOUT}"
            )
    splits = {
        split: [
            (p, label)
            for label, name in enumerate(classes)
            for p in _pictures(found[name], root, skipped)
        ]
        for split, found in per_split.items()
    }
    return Layout(folder, classes, splits, sorted(skipped))


def carve(layout: Layout, test_size: float, seed: int = 0) -> Layout:
    """A layout with one split ("all") as "train" and "test": `test_size` of each class's pictures
    (at least one) drawn with a fixed seed, so that every run of every experiment is tested on the
    same pictures. Other layouts are returned as they are (their test/ is the test split)."""
    if set(layout.splits) != {"all"}:
        return layout
    items = layout.splits["all"]
    labels = np.array([label for _, label in items], dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(seed))
    test: set[int] = set()
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        test.update(rng.permutation(rows)[: max(1, round(test_size * len(rows)))].tolist())
    return Layout(
        layout.folder,
        layout.classes,
        {
            "train": [it for i, it in enumerate(items) if i not in test],
            "test": [it for i, it in enumerate(items) if i in test],
        },
        layout.skipped,
    )


def _work(task: tuple[str, int, int]) -> tuple[bytes, str, bytes] | str:
    """In a worker: (pixels C×H×W, SHA-256 hex of the file, SHA-256 of the pixels), or the skip
    reason."""
    path, channels, size = task
    try:
        pixels = read(Path(path), channels, size).tobytes()
        return (
            pixels,
            hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            hashlib.sha256(pixels).digest(),
        )
    except (ImageError, OSError) as exc:  # OSError: the file went away since `read`
        return first_line(exc)


def _work_chunk(job: tuple[Path, list[tuple[str, int, int]]]) -> str:
    """In a worker: `_work` over a chunk of tasks, pickled into the file `job[0]`; returns that
    file's name. The results travel through a file because a worker killed while it writes a large
    result into the pool's pipe leaves half a message there, on which ProcessPoolExecutor waits
    forever; a name is written whole."""
    target, tasks = job
    with open(target, "wb") as fh:
        pickle.dump([_work(task) for task in tasks], fh, protocol=pickle.HIGHEST_PROTOCOL)
    return target.name


def _ordered(
    tasks: list[tuple[str, int, int]], workers: int, row: int, scratch: Path
) -> Iterator[tuple[bytes, str, bytes] | str]:
    """`_work` over `tasks` in order, in `workers` processes (not multiprocessing.Pool, whose imap
    waits forever on a killed worker), each chunk's results passed through a file in `scratch` and
    deleted once read. map queues all it is given at once, so here at most two windows of 4 chunks
    per worker are queued, a chunk holding at most 4 MiB of `row`-byte pictures."""
    workers = max(1, min(workers, len(tasks)))
    ctx = multiprocessing.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        ctx.set_forkserver_preload(
            ["pipeline.core.images", __name__]
        )  # imported once by the server, not by each worker
    chunk = max(1, min(32, len(tasks) // (workers * 8), (4 << 20) // row))
    jobs = ((scratch / f"{i}.pickle", tasks[i : i + chunk]) for i in range(0, len(tasks), chunk))
    windows = iter(lambda: list(itertools.islice(jobs, workers * 4)), [])
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        queued = [pool.map(_work_chunk, w) for w in itertools.islice(windows, 2)]
        while queued:
            for name in queued.pop(0):
                with open(scratch / name, "rb") as fh:
                    results = pickle.load(fh)
                os.unlink(scratch / name)
                yield from results
            queued.extend(pool.map(_work_chunk, w) for w in itertools.islice(windows, 1))
    except BrokenExecutor:  # BrokenProcessPool
        raise PipelineError(
            "a process decoding the pictures died (killed, out of memory?); try fewer workers"
        ) from None
    finally:  # also when the caller stops early: drop what is queued rather than decode it
        pool.shutdown(cancel_futures=True)


def _check(
    layout: Layout, rows: dict[str, list[tuple[int, str]]], skipped: list[tuple[str, str]]
) -> None:
    """Refuse a class in a split (so also an empty split) that has no usable picture left, with a
    reason why."""
    for split, found in rows.items():
        for label in sorted(set(range(len(layout.classes))) - {label for label, _ in found}):
            name = layout.classes[label]
            # The class folder is the first part of a relative path, or the second below train/,
            # val/ or test/.
            why = [f"{p}: {r}" for p, r in skipped if name in Path(p).parts[:2]]
            note = (
                f"{len(why)} skipped, first {why[0]}" if why else "its folder holds no picture file"
            )
            raise PipelineError(
                f"data.folder {layout.folder}: class {name!r} has no usable picture in the {split} "
                f"split ({note})"
            )


def _duplicates(seen: dict[bytes, list[tuple[str, str]]]) -> dict[str, Any]:
    """Pairs of pictures in two different splits with identical pixels (first 1000 listed), counted
    split by split."""
    by_split = (
        [[rel for _, rel in g] for _, g in itertools.groupby(found, key=lambda f: f[0])]
        for found in seen.values()
    )
    pairs = [
        (a, b) for groups in by_split for a, b in itertools.combinations(groups, 2)
    ]  # `found` is in split order
    listed = itertools.islice(([x, y] for a, b in pairs for x in a for y in b), 1000)
    return {"count": sum(len(a) * len(b) for a, b in pairs), "pairs": list(listed)}


def decode(
    layout: Layout,
    channels: int,
    size: int,
    out: Path,
    workers: int,
    progress: Callable[[int, int, float], None],
) -> dict[str, Any]:
    """Decode every picture of `layout` once (see `read`) in `workers` processes into `out`,
    replaced on success: per split `<split>/images.u8` (raw uint8 rows N×C×H×W appended as they
    arrive: memory holds a few chunks, never the data set), `labels.npy` (int64 N), `files.json`
    (paths relative to the folder, row order); `report.json`, also returned: classes, image_size
    (pixels), channels, splits (count, per_class), skipped ({path, reason}), duplicates across
    splits (count, pairs), digest (SHA-256 of sorted relative paths and file SHA-256s). Calls
    `progress(done, total, seconds)` per picture. Raises PipelineError for bad channels/size, or a
    class in a split with no picture."""
    if channels not in (1, 3) or size < 1:
        raise PipelineError(
            f"data.channels must be 1 or 3 and data.image_size at least 1, got {channels} and "
            f"{size}"
        )
    entries = [
        (split, path, label) for split, items in layout.splits.items() for path, label in items
    ]
    tasks = [(str(path), channels, size) for _, path, _ in entries]
    rows: dict[str, list[tuple[int, str]]] = {split: [] for split in layout.splits}
    skipped = [(p.relative_to(layout.folder).as_posix(), why) for p, why in layout.skipped]
    seen: dict[bytes, list[tuple[str, str]]] = {}
    used: list[tuple[str, str]] = []
    start = time.monotonic()
    with atomic.directory(out) as tmp, contextlib.ExitStack() as stack:
        (tmp / ".chunks").mkdir()
        results = stack.enter_context(
            contextlib.closing(_ordered(tasks, workers, channels * size * size, tmp / ".chunks"))
        )
        for split in layout.splits:
            (tmp / split).mkdir()
        files = {
            split: stack.enter_context(open(tmp / split / "images.u8", "wb"))
            for split in layout.splits
        }
        pairs = zip(entries, results, strict=False)
        for done, ((split, path, label), result) in enumerate(pairs, 1):
            rel = path.relative_to(layout.folder).as_posix()
            if isinstance(result, str):
                skipped.append((rel, result))
            else:
                files[split].write(result[0])
                rows[split].append((label, rel))
                used.append((rel, result[1]))
                seen.setdefault(result[2], []).append((split, rel))
            progress(done, len(entries), time.monotonic() - start)
        (tmp / ".chunks").rmdir()  # every chunk's file was read and deleted
        _check(layout, rows, skipped)
        for split, found in rows.items():
            np.save(
                tmp / split / "labels.npy", np.array([label for label, _ in found], dtype=np.int64)
            )
            atomic.write_json(tmp / split / "files.json", [rel for _, rel in found])
        counts = {
            s: np.bincount([lb for lb, _ in r], minlength=len(layout.classes)).tolist()
            for s, r in rows.items()
        }
        report = {
            "classes": list(layout.classes),
            "image_size": size,
            "channels": channels,
            "splits": {
                s: {"count": sum(c), "per_class": dict(zip(layout.classes, c, strict=False))}
                for s, c in counts.items()
            },
            "skipped": [{"path": p, "reason": r} for p, r in sorted(skipped)],
            "duplicates": _duplicates(seen),
            "digest": hashlib.sha256(
                "".join(f"{r}\0{h}\n" for r, h in sorted(used)).encode()
            ).hexdigest(),
        }
        atomic.write_json(tmp / "report.json", report)
    return report


def read_split(out: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split written by `decode`: (images uint8 N×C×H×W, labels int64 N). The images are a
    read-only view of an `mmap.mmap` of `out/<split>/images.u8`: pages are read on first touch,
    shared with the page cache, and `drop_pages` gives them back. Raises PipelineError when the
    files are missing or disagree in size."""
    folder = Path(out) / split
    try:
        report = json.loads((Path(out) / "report.json").read_text())
        channels, size = int(report["channels"]), int(report["image_size"])
        labels = np.load(folder / "labels.npy").astype(np.int64)
        with open(folder / "images.u8", "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(mapped, dtype=np.uint8).reshape(
            len(labels), channels, size, size
        ), labels
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
    ) as exc:  # ValueError: sizes disagree (or an empty file)
        raise PipelineError(
            f"{folder}: decoded pictures missing or damaged ({first_line(exc)}); "
            "rerun the download stage (dvc repro -f download)"
        ) from None


def drop_pages(images: np.ndarray) -> None:
    """Release this process's pages of the memory map behind `read_split`'s images (madvise
    DONTNEED; they are read again on next touch). Does nothing for other arrays, or where the
    platform lacks it."""
    base: Any = images
    while isinstance(base, np.ndarray):
        base = base.base
    if (
        isinstance(base, memoryview)
        and isinstance(base.obj, mmap.mmap)
        and hasattr(mmap, "MADV_DONTNEED")
    ):
        base.obj.madvise(mmap.MADV_DONTNEED)
