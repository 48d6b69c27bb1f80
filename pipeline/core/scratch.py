"""Temporary folders of our own, removed with whatever libraries leave in them.

MLflow creates folders under the system's temporary folder and does not remove all of them: a model
that `download_artifacts` fetches, the MLmodel file `get_model_info` reads (each a `tmpXXXX/<model
name>/` for good). Code that calls such functions runs inside `private_tmpdir`, whose folder goes
on the way out; the tracking process sends its temporary files to `process_tmpdir`, removed when it
ends, also when it ends because the stage was killed, and by the next one when both were killed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def private_tmpdir(prefix: str) -> Iterator[Path]:
    """Inside, this process's temporary files and folders (tempfile's folder) are made in a fresh
    folder under the system's one, which is removed on the way out, with all it holds."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    before = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = before
        remove(folder)


def process_tmpdir(prefix: str) -> Path:
    """From now on, this process's temporary files and those of the processes it starts (TMPDIR)
    are made in a fresh folder, `<prefix><pid>-XXXX`, removed when the process ends through
    multiprocessing (a pool's worker); `remove` removes it earlier (before an os._exit). Folders of
    the same prefix left by processes no longer alive (killed at once with their stage, so nothing
    of theirs ran) are removed first."""
    from multiprocessing.util import Finalize

    root = Path(tempfile.gettempdir())
    for stale in root.glob(f"{prefix}*-*"):
        pid = stale.name.removeprefix(prefix).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            remove(stale)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root))
    tempfile.tempdir = os.environ["TMPDIR"] = str(folder)
    # exitpriority 0: run by multiprocessing at the worker's end, after the worker's last task.
    Finalize(None, remove, args=(folder,), exitpriority=0)
    return folder


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (a process of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove(folder: Path) -> None:
    """Remove a temporary folder and everything in it; what cannot be removed is left."""
    shutil.rmtree(folder, ignore_errors=True)
