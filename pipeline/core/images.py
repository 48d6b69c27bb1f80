"""Users' own pictures (an ImageFolder tree) as uint8 arrays: finding them, decoding them once, reading them back.

NumPy and Pillow only: every decoding worker imports this module, and one importing torch would pay ~3 s for nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import mmap
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.core import atomic
from pipeline.core.errors import PipelineError, first_line

MAX_PIXELS = 64 * 1024 * 1024  # 8k × 8k: far beyond any classifier's input; refused from the header, before decoding
# torchvision's IMG_EXTENSIONS, plus GIF (its first frame).
SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
LAYOUT = "expected one subfolder per class, or train/ and test/ (optionally val/) each holding one subfolder per class"
# fork would copy a caller holding torch's OpenMP/CUDA or MLflow's threads and their locks (a child can hang on one);
# spawn re-imports the caller's main script in every worker (6.5 s each if it imports torch). forkserver forks them
# from a clean server that preloads this module: with torch imported, 0.8 s for the first pool, 30 ms after.
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class ImageError(Exception):
    """A picture that cannot be used; the message is the short reason shown in the skip list."""


@dataclass(frozen=True)
class Layout:
    """What `scan` found: classes (sorted, as torchvision's find_classes), pictures (path, class), skips (path, why)."""

    folder: Path
    classes: tuple[str, ...]
    splits: dict[str, list[tuple[Path, int]]]  # "train", "val", "test" as the folder has them, or just "all"
    skipped: list[tuple[Path, str]]


def open_image(path: Path) -> Image.Image:
    """A picture opened lazily (header only; `load` decodes). Raises ImageError for a zero-byte file, one
    Pillow cannot identify, or one over MAX_PIXELS (from the header; Pillow's bomb warning/error too)."""
    try:
        if os.stat(path).st_size == 0:
            raise ImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a reason in the list, not a warning
            img = Image.open(path)
    except UnidentifiedImageError:
        raise ImageError("not a picture Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot be opened ({first_line(exc)})") from None
    if img.width * img.height > MAX_PIXELS:
        img.close()
        raise ImageError(f"{img.width}×{img.height} pixels is over 64 megapixels")
    return img


def _convert(img: Image.Image, channels: int) -> Image.Image:
    """`img` in mode L (`channels` 1) or RGB (3); what is transparent shows a white background. 16-bit greyscale
    (and mode I within 0..65535) is divided by 257, so 65535 → 255; float within [0, 1] multiplied by 255; any
    other 32-bit or float picture stretched from its own minimum..maximum."""
    mode = img.mode
    try:
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            v = np.asarray(img)
            if mode.startswith("I;16") or (mode == "I" and v.min() >= 0 and v.max() <= 65535):
                v = (v.astype(np.uint32) + 128) // 257  # round(v / 257) in integers
            else:
                v = np.nan_to_num(v.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
                lo, hi = (0.0, 1.0) if mode == "F" and v.min() >= 0 and v.max() <= 1 else (float(v.min()), float(v.max()))
                v = np.rint((v - lo) * (255.0 / (hi - lo if hi > lo else 1.0)))
            img = Image.fromarray(v.astype(np.uint8), "L")
        elif mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
            white = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, img.convert("RGBA"))
        if img.mode not in ("1", "L", "P", "RGB"):
            img = img.convert("RGB")  # CMYK, YCbCr, LAB…: Pillow converts those to RGB, not all of them to L
        return img.convert("L" if channels == 1 else "RGB")
    except ValueError as exc:
        raise ImageError(f"colour mode {mode} cannot be converted ({first_line(exc)})") from None


def prepare(img: Image.Image, channels: int, size: int) -> np.ndarray:
    """A loaded picture as uint8 C×H×W, C = `channels` (1 or 3), H = W = `size` pixels: EXIF orientation applied,
    converted (palette, transparency over white, CMYK, 1-bit, 16/32-bit and float scaled to 0–255), resized as
    torchvision's Resize(size) (shorter side to `size`, longer to int(size * long / short), Pillow's antialiased
    bilinear), cropped as its CenterCrop(size). Raises ImageError for an unconvertible or too elongated picture."""
    img = _convert(ImageOps.exif_transpose(img), channels)
    width, height = img.size
    new_long = int(size * max(width, height) / min(width, height))
    if new_long * size > MAX_PIXELS:
        raise ImageError(f"{width}×{height} pixels is too elongated (resized it would be over 64 megapixels)")
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)  # a copy when the size is already right
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    array = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return np.ascontiguousarray(array[None] if channels == 1 else array.transpose(2, 0, 1))


def read(path: Path, channels: int, size: int) -> np.ndarray:
    """One picture file as uint8 C×H×W (see `prepare`). A JPEG at least twice `size` on both sides is decoded
    by libjpeg at 1/2, 1/4 or 1/8 scale (never below `size`), and a colour JPEG read as grey is decoded to its
    luma plane: much faster, within a few grey levels of a full decode. Raises ImageError with a short reason."""
    img = open_image(path)
    try:
        with img:
            if img.format in ("JPEG", "MPO"):  # MPO: a camera's JPEG with extra frames
                img.draft("L" if channels == 1 else "RGB", (size, size))
            img.load()
            return prepare(img, channels, size)
    except Exception as exc:  # cut or damaged files fail in many ways: OSError, SyntaxError, ValueError, struct.error…
        raise exc if isinstance(exc, (ImageError, MemoryError)) else ImageError(f"truncated or damaged ({first_line(exc)})")


def _listdir(path: Path, root: Path, skipped: list[tuple[Path, str]],
             only_folders: bool = False) -> tuple[list[Path], list[Path]]:
    """(folders, picture files) directly in `path`, sorted, the rest in `skipped`; refuses a symbolic link pointing
    outside `root` (those inside are followed), and pictures where there should be `only_folders`."""
    folders, files = [], []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        p, hidden = Path(entry.path), entry.name.startswith(".")
        if entry.is_symlink() and not p.resolve().is_relative_to(root):
            raise PipelineError(f"{p}: symbolic link to {p.resolve()}, outside data.folder {root}; copy it in instead")
        is_dir, picture = entry.is_dir(), p.suffix.lower() in SUFFIXES
        if not hidden and (is_dir or picture and entry.is_file()):
            (folders if is_dir else files).append(p)
        else:  # a hidden "picture" is e.g. macOS's ._photo.jpg, which holds none
            skipped.append((p, "hidden folder" if is_dir else "not a picture file" if not picture
                            else "hidden file" if hidden else "not a regular file"))
    if only_folders and files:
        raise PipelineError(f"{files[0]}: picture outside a class folder; {LAYOUT}")
    return folders, files


def _pictures(path: Path, root: Path, skipped: list[tuple[Path, str]], above: frozenset[Path] = frozenset()) -> list[Path]:
    """Every picture file at any depth below `path`, sorted by path."""
    here = path.resolve()
    if here in above:
        raise PipelineError(f"{path}: symbolic link loop (it leads back to {here})")
    folders, files = _listdir(path, root, skipped)
    return sorted(files + [p for folder in folders for p in _pictures(folder, root, skipped, above | {here})])


def scan(folder: Path) -> Layout:
    """The pictures of `folder`/<class>/… or `folder`/{train,test[,val]}/<class>/… (any depth below a class).
    Raises PipelineError (one line) for a missing folder, fewer than two classes, a picture outside a class
    folder, split folders whose classes differ, a symbolic link that points outside `folder` or loops."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"data.folder {folder}: no such folder; {LAYOUT}")
    root, skipped = folder.resolve(), []
    tops = {p.name: p for p in _listdir(folder, root, skipped, only_folders=True)[0]}
    per_split = {"all": tops}
    if "train" in tops or "test" in tops:
        if set(tops) - {"train", "val", "test"} or not {"train", "test"} <= set(tops):
            raise PipelineError(f"data.folder {folder}: holds {', '.join(f'{n}/' for n in tops)}; {LAYOUT}")
        per_split = {s: {p.name: p for p in _listdir(tops[s], root, skipped, only_folders=True)[0]}
                     for s in ("train", "val", "test") if s in tops}
    first = next(iter(per_split))
    classes = tuple(sorted(per_split[first]))
    if len(classes) < 2:
        raise PipelineError(f"data.folder {folder}: {len(classes)} class folder(s); {LAYOUT}, at least two classes")
    for split, found in per_split.items():
        for name in sorted(set(classes) ^ set(found)):
            where, lacking = (split, first) if name in found else (first, split)
            raise PipelineError(f"data.folder {folder}: class {name!r} is in {where}/ but not in {lacking}/; {LAYOUT}")
    splits = {split: [(p, label) for label, name in enumerate(classes) for p in _pictures(found[name], root, skipped)]
              for split, found in per_split.items()}
    return Layout(folder, classes, splits, sorted(skipped))


def _work(task: tuple[str, int, int]) -> tuple[bytes, str, bytes] | str:
    """In a worker: (pixels C×H×W, SHA-256 hex of the file, SHA-256 of the pixels), or the skip reason."""
    path, channels, size = task
    try:
        pixels = read(Path(path), channels, size).tobytes()
        return pixels, hashlib.sha256(Path(path).read_bytes()).hexdigest(), hashlib.sha256(pixels).digest()
    except (ImageError, OSError) as exc:  # OSError: the file went away since `read`
        return first_line(exc)


def _ordered(tasks: list[tuple[str, int, int]], workers: int) -> Iterator[tuple[bytes, str, bytes] | str]:
    """`_work` over `tasks` in order, by a Pool of `workers` processes. imap alone queues every task at once, so
    results not yet taken could pile up without limit; here at most two windows of tasks are queued."""
    workers = max(1, min(workers, len(tasks)))
    ctx = multiprocessing.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        ctx.set_forkserver_preload([__name__])  # the server imports NumPy and Pillow once, not each worker
    chunk = max(1, min(32, len(tasks) // (workers * 8)))
    windows = (tasks[i : i + chunk * workers * 4] for i in range(0, len(tasks), chunk * workers * 4))
    with ctx.Pool(workers) as pool:  # left (workers killed) when the caller closes this generator
        queued = [pool.imap(_work, w, chunk) for w in itertools.islice(windows, 2)]
        while queued:
            yield from queued.pop(0)
            queued.extend(pool.imap(_work, w, chunk) for w in itertools.islice(windows, 1))


def _check(layout: Layout, rows: dict[str, list[tuple[int, str]]], skipped: list[tuple[str, str]]) -> None:
    """Refuse a class in a split (so also an empty split) that has no usable picture left, with a reason why."""
    for split, found in rows.items():
        where = f"data.folder {layout.folder}" + ("" if split == "all" else f", {split}/")
        for label in sorted(set(range(len(layout.classes))) - {label for label, _ in found}):
            prefix = ("" if split == "all" else f"{split}/") + f"{layout.classes[label]}/"
            why = [f"{p}: {r}" for p, r in skipped if p.startswith(prefix)]
            note = f"{len(why)} skipped, first {why[0]}" if why else "its folder holds no picture file"
            raise PipelineError(f"{where}: class {layout.classes[label]!r} has no usable picture ({note})")


def _duplicates(seen: dict[bytes, list[tuple[str, str]]]) -> dict[str, Any]:
    """Pairs of pictures in two different splits with byte-identical pixels (the first 1000 listed), counted per
    pair of splits rather than pair by pair, so a thousand blank pictures in one split cost nothing."""
    by_split = ([[rel for _, rel in g] for _, g in itertools.groupby(found, key=lambda f: f[0])] for found in seen.values())
    pairs = [(a, b) for groups in by_split for a, b in itertools.combinations(groups, 2)]  # `found` is in split order
    listed = itertools.islice(([x, y] for a, b in pairs for x in a for y in b), 1000)
    return {"count": sum(len(a) * len(b) for a, b in pairs), "pairs": list(listed)}


def decode(layout: Layout, channels: int, size: int, out: Path, workers: int,
           progress: Callable[[int, int, float], None]) -> dict[str, Any]:
    """Decode every picture of `layout` once (see `read`) with a Pool of `workers` processes into `out`, replaced
    whole: per split `<split>/images.u8` (raw uint8 rows N×C×H×W, appended as they arrive, so memory holds a few
    chunks, never the data set), `labels.npy` (int64 N), `files.json` (paths relative to the folder, row order);
    `report.json`, also returned: classes, image_size (pixels), channels, splits (count, per_class), skipped
    ({path, reason}), duplicates across splits (count, pairs), digest (SHA-256 of the sorted relative paths and
    file SHA-256s used). Calls `progress(done, total, seconds)` after each picture. Raises PipelineError for bad
    channels/size, or a class in a split with no usable picture (`out` then stays as it was)."""
    if channels not in (1, 3) or size < 1:
        raise PipelineError(f"data.channels must be 1 or 3 and data.image_size at least 1, got {channels} and {size}")
    entries = [(split, path, label) for split, items in layout.splits.items() for path, label in items]
    tasks = [(str(path), channels, size) for _, path, _ in entries]
    rows: dict[str, list[tuple[int, str]]] = {split: [] for split in layout.splits}
    skipped = [(p.relative_to(layout.folder).as_posix(), why) for p, why in layout.skipped]
    seen: dict[bytes, list[tuple[str, str]]] = {}
    used: list[tuple[str, str]] = []
    start = time.monotonic()
    with atomic.directory(out) as tmp, contextlib.ExitStack() as stack:
        results = stack.enter_context(contextlib.closing(_ordered(tasks, workers)))
        for split in layout.splits:
            (tmp / split).mkdir()
        files = {split: stack.enter_context(open(tmp / split / "images.u8", "wb")) for split in layout.splits}
        for done, ((split, path, label), result) in enumerate(zip(entries, results), 1):
            rel = path.relative_to(layout.folder).as_posix()
            if isinstance(result, str):
                skipped.append((rel, result))
            else:
                files[split].write(result[0])
                rows[split].append((label, rel))
                used.append((rel, result[1]))
                seen.setdefault(result[2], []).append((split, rel))
            progress(done, len(tasks), time.monotonic() - start)
        _check(layout, rows, skipped)
        for split, found in rows.items():
            np.save(tmp / split / "labels.npy", np.array([label for label, _ in found], dtype=np.int64))
            atomic.write_json(tmp / split / "files.json", [rel for _, rel in found])
        counts = {s: np.bincount([lb for lb, _ in r], minlength=len(layout.classes)).tolist() for s, r in rows.items()}
        report = {"classes": list(layout.classes), "image_size": size, "channels": channels,
                  "splits": {s: {"count": sum(c), "per_class": dict(zip(layout.classes, c))} for s, c in counts.items()},
                  "skipped": [{"path": p, "reason": r} for p, r in sorted(skipped)], "duplicates": _duplicates(seen),
                  "digest": hashlib.sha256("".join(f"{r}\0{h}\n" for r, h in sorted(used)).encode()).hexdigest()}
        atomic.write_json(tmp / "report.json", report)
    return report


def read_split(out: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split written by `decode`: (images uint8 N×C×H×W, labels int64 N). The images are a read-only view of
    an `mmap.mmap` of `out/<split>/images.u8`: pages are read on first touch, shared with the page cache, and
    `drop_pages` gives them back. Raises PipelineError when the files are missing or disagree in size."""
    folder = Path(out) / split
    try:
        report = json.loads((Path(out) / "report.json").read_text())
        channels, size = int(report["channels"]), int(report["image_size"])
        labels = np.load(folder / "labels.npy").astype(np.int64)
        with open(folder / "images.u8", "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(mapped, dtype=np.uint8).reshape(len(labels), channels, size, size), labels
    except (OSError, ValueError, KeyError, TypeError) as exc:  # ValueError: sizes disagree (or an empty file)
        raise PipelineError(f"{folder}: decoded pictures missing or damaged ({first_line(exc)}); "
                            "rerun the decoding stage") from None


def drop_pages(images: np.ndarray) -> None:
    """Release this process's pages of the memory map behind `read_split`'s images (madvise DONTNEED; they are
    read again on next touch). Does nothing for other arrays, or where the platform lacks it."""
    base: Any = images
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        base.obj.madvise(mmap.MADV_DONTNEED)
