"""A built-in dataset's original files into data/raw: local mirrors and packaged copies first, MD5
checks, safe extraction.

Offline first: the original files are taken from a local folder (a mirror, or a Python package that
ships them), checked against torchvision's own MD5 table and copied into place; torchvision then
verifies and extracts them exactly as after its own download. With no local files, torchvision
downloads them itself. (A folder of your own pictures is decoded instead: core.decoding.)
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tarfile
from pathlib import Path

from pipeline.core import atomic, datasets, paths
from pipeline.core.datasets import DatasetSpec
from pipeline.core.errors import PipelineError, first_line
from pipeline.core.params import Params


def fetch(params: Params) -> tuple[DatasetSpec, Path | None, list[str]]:
    """The `download` stage's work for a built-in data.dataset: its files into data/raw.

    Returns (spec, the local folder they came from or None for a download, notices for the user).
    """
    spec = datasets.get(params.data.dataset)
    mirror = paths.project_root() / params.data.mirror if params.data.mirror else None
    if mirror is not None and not mirror.is_dir():
        raise PipelineError(f"data.mirror: folder {mirror} does not exist")
    notices = []
    if mirror is not None:
        check_mirror(spec, mirror)
        missing = [name for name, _ in spec.files if not (mirror / name).is_file()]
        if missing:
            notices.append(
                f"data.mirror {mirror} lacks {', '.join(missing)}; trying the next source"
            )
    return spec, download(spec, paths.RAW, mirror), notices


def check_mirror(spec: DatasetSpec, mirror: Path) -> None:
    """Raise PipelineError, in one line naming the file, its MD5 and torchvision's, when a file of
    the dataset in `mirror` is damaged (truncated, another version), whether or not the mirror
    holds all of the files.

    The stage stops rather than passing over it to the next source: the user put the file there on
    purpose (data.mirror), so a damaged copy is a mistake to show them, not to hide; taking the
    package's copy or a download instead would train on files they did not choose and leave their
    mirror broken for the next run and every project that shares it.
    """
    for name, expected in spec.files:
        path = mirror / name
        if path.is_file():
            actual = md5sum(path)
            if actual != expected:
                raise PipelineError(
                    f"data.mirror: {path}: MD5 {actual} does not match torchvision's {expected} "
                    "(a damaged copy); replace it with a sound one or remove it"
                )


def md5sum(path: Path) -> str:
    """MD5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_source(spec: DatasetSpec, mirror: Path | None = None) -> Path | None:
    """The first local folder that holds all of the dataset's original files, if any."""
    candidates: list[Path] = []
    if mirror is not None:
        candidates.append(Path(mirror))
    if spec.package_source is not None:
        package, subfolder = spec.package_source
        found = importlib.util.find_spec(package)
        if found is not None and found.origin is not None:
            candidates.append(Path(found.origin).parent / subfolder)
    for folder in candidates:
        if all((folder / name).is_file() for name, _ in spec.files):
            return folder
    return None


def download(spec: DatasetSpec, out_dir: Path, mirror: Path | None = None) -> Path | None:
    """Put the dataset's files, verified and extracted, into `out_dir` (replaced atomically).

    Returns the local folder the files were copied from, or None when torchvision downloaded them.
    """
    source = local_source(spec, mirror)
    with atomic.directory(out_dir) as tmp:
        target = tmp if spec.is_archive else tmp / spec.folder / "raw"
        target.mkdir(parents=True, exist_ok=True)
        if source is not None:
            for name, expected in spec.files:
                actual = md5sum(source / name)
                if actual != expected:
                    raise PipelineError(
                        f"{source / name}: MD5 {actual} does not match torchvision's {expected}"
                    )
                shutil.copyfile(source / name, target / name)
        try:
            if spec.is_archive:
                _fetch_and_extract_archive(spec, tmp, have_file=source is not None)
            else:
                for train in (True, False):
                    spec.torchvision_class(str(tmp), train=train, download=True)
        except (RuntimeError, OSError) as exc:
            missing = ", ".join(name for name, _ in spec.files)
            raise PipelineError(
                f"{spec.name}: no local copy and the download failed ({first_line(exc)}); "
                f"put {missing} into a folder and set data.mirror to it"
                if source is None
                else f"{spec.name}: could not extract the files from {source}: {first_line(exc)}"
            ) from None
    return source


def _fetch_and_extract_archive(spec: DatasetSpec, root: Path, have_file: bool) -> None:
    """Download (unless copied already) and safely extract a CIFAR-style archive, then verify it."""
    from torchvision.datasets.utils import download_url

    tv = spec.torchvision_class
    ((name, md5),) = spec.files
    if not have_file:
        download_url(tv.url, str(root), name, md5)
    safe_extract(root / name, root)
    for train in (True, False):
        tv(str(root), train=train, download=False)  # checks every batch's MD5


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive, refusing any member that would land outside `dest` or is not a plain
    file/folder."""
    dest = Path(dest).resolve()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if not target.is_relative_to(dest) or not (member.isfile() or member.isdir()):
                raise PipelineError(
                    f"{archive}: refusing to extract {member.name!r} (outside the target folder or "
                    "not a regular file)"
                )
        tar.extractall(dest, filter="data")
