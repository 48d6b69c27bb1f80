"""Write outputs under a temporary name and rename them into place, so no reader sees half a file.

The temporary files are created private (0600, 0700 for folders) by tempfile; before the rename they
get the permissions any other new file of the user gets (0666/0777 less the umask). Checks added
with `checked` run before every rename: one that raises leaves the previous version in place (the
stage decorator's: the stage's inputs did not change meanwhile, core.workspace).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


_CHECKS: list[Callable[[], None]] = []


@contextmanager
def checked(check: Callable[[], None]) -> Iterator[None]:
    """Within the block, call `check` before any output written here replaces its previous version;
    what it raises stops the write with that version left in place."""
    _CHECKS.append(check)
    try:
        yield
    finally:
        _CHECKS.remove(check)


def _before_replace() -> None:
    for check in list(_CHECKS):
        check()


def _remove_stale(path: Path) -> None:
    """Remove what a writer killed mid-way (SIGKILL runs no cleanup) left beside `path`."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        _before_replace()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented, strict JSON atomically; keys keep their insertion order. Raises
    ValueError for NaN or infinity, which strict JSON readers refuse (the caller must have stopped
    before)."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV file with a header row atomically."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())


@contextmanager
def staged(path: Path) -> Iterator[Path]:
    """Yield a temporary path with `path`'s file name, in a folder beside it; on success the file
    there replaces `path`, on failure `path` is left as it was. For a file that must be used before
    it counts (the model, which the store must hold first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp / path.name
        _before_replace()
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def directory(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path`, on failure it is
    removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        _before_replace()
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
