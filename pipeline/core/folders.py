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

from pipeline.core import atomic, splits
from pipeline.core.errors import PipelineError, first_line
from pipeline.core.images import SUFFIXES, ImageError, read

LAYOUT = (
    "expected one subfolder per class, or train/ and test/ (optionally val/) each holding one "
    "subfolder per class"
)
# Folders and files that hold no pictures of the user's, skipped by name wherever they are. The
# project's .dvcignore names every one (tests/test_folder_layouts.py checks), so that DVC, which
# hashes data.folder as the download stage's dependency, reruns nothing when one appears.
JUNK_FOLDERS = {
    "__MACOSX": "macOS zip metadata folder",
    ".ipynb_checkpoints": "Jupyter checkpoint folder",
    "@eaDir": "Synology thumbnail folder",
    "$RECYCLE.BIN": "Windows recycle bin",
    "System Volume Information": "Windows system folder",
}
JUNK_FILES = (".DS_Store", "._*", "Thumbs.db", "desktop.ini")  # skipped as no picture, or hidden
# The reasons the listing gives (`_listdir`); a skip with any other reason is a picture file that
# could not be read (empty, truncated, undecodable, too large).
LISTED = frozenset(
    {
        *JUNK_FOLDERS.values(),
        "hidden folder",
        "hidden file",
        "not a picture file",
        "not a regular file",
    }
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
        if is_dir and entry.name in JUNK_FOLDERS:
            skipped.append((p, JUNK_FOLDERS[entry.name]))
        elif not hidden and (is_dir or (picture and entry.is_file())):
            (folders if is_dir else files).append(p)
        else:  # a hidden "picture" is e.g. macOS's ._photo.jpg, which holds none
            why = "hidden folder" if is_dir else "not a picture file" if not picture else None
            skipped.append((p, why or ("hidden file" if hidden else "not a regular file")))
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
    outside `folder` or loops, a class folder with no picture file in a split."""
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
    pictures = {
        split: [
            (p, label)
            for label, name in enumerate(classes)
            for p in _pictures(found[name], root, skipped)
        ]
        for split, found in per_split.items()
    }
    rel = [(p.relative_to(folder).as_posix(), why) for p, why in skipped]
    _check(folder, classes, {s: [lb for _, lb in found] for s, found in pictures.items()}, rel)
    return Layout(folder, classes, pictures, sorted(skipped))


def class_path(rel: str, split: str) -> str:
    """The path of a picture inside its class folder, from its path `rel` relative to data.folder
    in `split` ("all", "train", "val", "test"): "cat/a/1.png" or "train/cat/a/1.png" -> "a/1.png".
    (A folder's own split folder comes first; a folder without them has no class named train or
    test, and its val class only in split "all".)"""
    parts = rel.split("/")
    return "/".join(parts[2:] if parts[0] == split and split != "all" else parts[1:])


def class_paths(out: Path, split: str) -> list[str]:
    """`class_path` of each picture of `split` as `decode` wrote it into `out`, in row order: what
    the validation carve hashes (core.splits). Raises PipelineError when files.json is missing."""
    try:
        rels = json.loads((Path(out) / split / "files.json").read_text())
    except (OSError, ValueError) as exc:
        raise PipelineError(
            f"{out}: decoded pictures missing or damaged ({first_line(exc)}); "
            "rerun the decoding stage"
        ) from None
    return [class_path(rel, split) for rel in rels]


def carve(layout: Layout, test_size: float, seed: int = 0) -> Layout:
    """A layout with one split ("all") as "train" and "test". A picture is in test when the hash of
    its path inside its class folder (core.splits.hashed, role "test", a fixed seed) falls below
    `test_size`: every run of every experiment is tested on the same pictures, and adding, removing
    or relabelling (moving to another class folder) pictures moves no other picture between train
    and test; a renamed picture may change sides. About `test_size` of each class (the report says
    how much), at least one picture in test and one in train. Other layouts are returned as they
    are (their test/ is the test split). Raises PipelineError for a class of a single picture: it
    could not be both learnt and tested."""
    if set(layout.splits) != {"all"}:
        return layout
    items = layout.splits["all"]
    labels = np.array([label for _, label in items], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(layout.classes))
    for label in np.flatnonzero(counts == 1):
        raise PipelineError(
            f"data.folder {layout.folder}: class {layout.classes[label]!r} has 1 picture: at least "
            "2 are needed, one to train on and one to test on"
        )
    keys = [class_path(p.relative_to(layout.folder).as_posix(), "all") for p, _ in items]
    test = splits.hashed(keys, labels, test_size, seed, "test")
    return Layout(
        layout.folder,
        layout.classes,
        {
            "train": [it for it, out in zip(items, test, strict=True) if not out],
            "test": [it for it, out in zip(items, test, strict=True) if out],
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
    folder: Path,
    classes: tuple[str, ...],
    labels: dict[str, list[int]],
    skipped: list[tuple[str, str]],
) -> None:
    """Refuse a class that has no (usable) picture in a split, so also an empty split, with a reason
    why: `labels` are the class indices each split holds, `skipped` (path relative to `folder`,
    reason)."""
    for split, found in labels.items():
        for label in sorted(set(range(len(classes))) - set(found)):
            name = classes[label]
            # The class folder is the first part of a relative path, or the second below train/,
            # val/ or test/.
            why = [f"{p}: {r}" for p, r in skipped if name in Path(p).parts[:2]]
            note = (
                f"{len(why)} skipped, first {why[0]}" if why else "its folder holds no picture file"
            )
            where = "" if split == "all" else f" in the {split} split"
            raise PipelineError(
                f"data.folder {folder}: class {name!r} has no usable picture{where} ({note})"
            )


# One picture's entry in `decode`'s index of pixels: (split, path relative to the folder, label).
Seen = dict[bytes, list[tuple[str, str, int]]]


def _duplicates(seen: Seen) -> dict[str, Any]:
    """Pairs of pictures in two different splits with identical pixels (first 1000 listed), counted
    split by split."""
    by_split = (
        [[rel for _, rel, _ in g] for _, g in itertools.groupby(found, key=lambda f: f[0])]
        for found in seen.values()
    )
    pairs = [
        (a, b) for groups in by_split for a, b in itertools.combinations(groups, 2)
    ]  # `found` is in split order
    listed = itertools.islice(([x, y] for a, b in pairs for x in a for y in b), 1000)
    return {"count": sum(len(a) * len(b) for a, b in pairs), "pairs": list(listed)}


def _conflicts(folder: Path, classes: tuple[str, ...], seen: Seen) -> dict[str, Any]:
    """Pairs of pictures with identical pixels under two different classes, in any splits (count,
    first 1000 listed): one of the two labels is wrong. Raises PipelineError for two classes that
    hold the same pictures (a copied or linked class folder): no model can tell them apart. (A class
    whose pictures are only part of another's, as a linked subfolder, is reported, not refused.)"""
    holds: dict[int, set[bytes]] = {}  # class -> the pixels of its pictures
    mixed: list[list[list[str]]] = []  # per picture under several classes: its paths per class
    for digest, found in seen.items():
        by_label: dict[int, list[str]] = {}
        for _, rel, label in found:
            by_label.setdefault(label, []).append(rel)
            holds.setdefault(label, set()).add(digest)
        if len(by_label) > 1:
            mixed.append(list(by_label.values()))
    count = sum(len(a) * len(b) for m in mixed for a, b in itertools.combinations(m, 2))
    pairs = ([x, y] for m in mixed for a, b in itertools.combinations(m, 2) for x in a for y in b)
    alike: dict[frozenset[bytes], int] = {}
    for label in sorted(holds):
        other = alike.setdefault(frozenset(holds[label]), label)
        if other != label:
            raise PipelineError(
                f"data.folder {folder}: classes {classes[other]!r} and {classes[label]!r} hold the "
                f"same {len(holds[label])} picture(s) (the same pixels): a copied or linked class "
                "folder? Remove one"
            )
    return {"count": count, "pairs": list(itertools.islice(pairs, 1000))}


def _decoded(
    layout: Layout,
    results: Iterator[tuple[bytes, str, bytes] | str],
    files: dict[str, Any],
    progress: Callable[[int, int, float], None],
) -> tuple[
    dict[str, list[tuple[int, str]]], list[tuple[str, str]], Seen, list[tuple[str, str, str]]
]:
    """Write each picture's pixels (`results`, in `layout`'s order) to its split's open file in
    `files`; returns per split its rows (label, path relative to the folder), the skipped (path,
    reason) including the layout's, the index of pixels, and (split, path, file SHA-256) of every
    row."""
    entries = [(s, path, label) for s, items in layout.splits.items() for path, label in items]
    rows: dict[str, list[tuple[int, str]]] = {split: [] for split in layout.splits}
    skipped = [(p.relative_to(layout.folder).as_posix(), why) for p, why in layout.skipped]
    seen: Seen = {}
    used: list[tuple[str, str, str]] = []
    start = time.monotonic()
    for done, ((split, path, label), result) in enumerate(zip(entries, results, strict=False), 1):
        rel = path.relative_to(layout.folder).as_posix()
        if isinstance(result, str):
            skipped.append((rel, result))
        else:
            files[split].write(result[0])
            rows[split].append((label, rel))
            used.append((split, rel, result[1]))
            seen.setdefault(result[2], []).append((split, rel, label))
        progress(done, len(entries), time.monotonic() - start)
    return rows, skipped, seen, used


def _report(
    layout: Layout,
    shape: tuple[int, int],
    rows: dict[str, list[tuple[int, str]]],
    skipped: list[tuple[str, str]],
    seen: Seen,
    used: list[tuple[str, str, str]],
) -> dict[str, Any]:
    """`decode`'s report of what `_decoded` returned (see `decode`); `shape` is (channels, size)."""
    counts = {
        s: np.bincount([lb for lb, _ in r], minlength=len(layout.classes)).tolist()
        for s, r in rows.items()
    }
    report = {
        "classes": list(layout.classes),
        "image_size": shape[1],
        "channels": shape[0],
        "splits": {
            s: {"count": sum(c), "per_class": dict(zip(layout.classes, c, strict=True))}
            for s, c in counts.items()
        },
        "skipped": [{"path": p, "reason": r} for p, r in sorted(skipped)],
        "duplicates": _duplicates(seen),
        "conflicts": _conflicts(layout.folder, layout.classes, seen),
        "digest": hashlib.sha256(
            "".join(f"{s}\0{r}\0{h}\n" for s, r, h in sorted(used)).encode()
        ).hexdigest(),
    }
    if "test" in counts:  # what share of each class is tested on
        totals = np.sum(list(counts.values()), axis=0)
        report["test_fraction"] = {
            name: round(t / max(1, n), 4)
            for name, t, n in zip(layout.classes, counts["test"], totals, strict=True)
        }
    return report


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
    splits (count, pairs), conflicts (count, pairs: the same pixels under two classes, any splits),
    test_fraction (per class, when there is a test split), digest (SHA-256 of the split, relative
    path and file SHA-256 of every row, sorted: which pictures are trained and tested on). Calls
    `progress(done, total, seconds)` per picture. Raises PipelineError for bad channels/size, a
    class in a split with no usable picture, or two classes holding the same pictures."""
    if channels not in (1, 3) or size < 1:
        raise PipelineError(
            f"data.channels must be 1 or 3 and data.image_size at least 1, got {channels} and "
            f"{size}"
        )
    tasks = [(str(path), channels, size) for items in layout.splits.values() for path, _ in items]
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
        rows, skipped, seen, used = _decoded(layout, results, files, progress)
        (tmp / ".chunks").rmdir()  # every chunk's file was read and deleted
        _check(
            layout.folder,
            layout.classes,
            {s: [lb for lb, _ in r] for s, r in rows.items()},
            skipped,
        )
        report = _report(layout, (channels, size), rows, skipped, seen, used)
        for split, found in rows.items():
            labels = np.array([label for label, _ in found], dtype=np.int64)
            np.save(tmp / split / "labels.npy", labels)
            atomic.write_json(tmp / split / "files.json", [rel for _, rel in found])
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
