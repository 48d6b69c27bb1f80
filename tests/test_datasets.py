"""Every dataset through the real stage code, from tiny synthetic files in each dataset's real
format.

The files are written in the original on-disk formats (idx .gz for the MNIST family, CIFAR's pickled
batches in a .tar.gz) and their MD5s are put into torchvision's tables, so download, MD5 checks,
extraction and loading all run for real.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import pickle
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import fit_tiny, model_uri, read_params, run, snapshot, write_params
from mlflow.tracking import MlflowClient

from pipeline.core import datasets, models, originals
from pipeline.core.errors import PipelineError
from pipeline.core.originals import md5sum
from pipeline.core.params import TrainParams
from pipeline.core.repo import clean_env
from pipeline.stages import download, evaluate, normalization_stats, train

OPTIONS = models.options_from(TrainParams())

N_TRAIN, N_TEST = 200, 50


def labels_for(n: int) -> np.ndarray:
    return np.arange(n) % 10  # every class present


def write_idx_files(folder: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">II", 0x801, n) + labels_for(n).astype(np.uint8).tobytes())


def write_cifar_archive(folder: Path, seed: int = 0) -> dict[str, str]:
    """cifar-10-python.tar.gz with five train batches, a test batch and the meta file; returns
    member MD5s."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    members: dict[str, bytes] = {}
    for i in range(1, 6):
        n = N_TRAIN // 5
        members[f"data_batch_{i}"] = pickle.dumps(
            {
                "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "labels": labels_for(n).tolist(),
            }
        )
    members["test_batch"] = pickle.dumps(
        {
            "data": rng.integers(0, 256, (N_TEST, 3072), dtype=np.uint8),
            "labels": labels_for(N_TEST).tolist(),
        }
    )
    members["batches.meta"] = pickle.dumps(
        {"label_names": list(datasets.DATASETS["cifar10"].class_names)}
    )
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    import hashlib

    return {name: hashlib.md5(data).hexdigest() for name, data in members.items()}


def make_mirror(name: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Synthetic original files in `folder`, with their MD5s injected into torchvision's tables."""
    tv = datasets.DATASETS[name].torchvision_class
    if name == "cifar10":
        md5s = write_cifar_archive(folder)
        monkeypatch.setattr(tv, "tgz_md5", md5sum(folder / tv.filename))
        monkeypatch.setattr(
            tv, "train_list", [[f"data_batch_{i}", md5s[f"data_batch_{i}"]] for i in range(1, 6)]
        )
        monkeypatch.setattr(tv, "test_list", [["test_batch", md5s["test_batch"]]])
        monkeypatch.setattr(tv, "meta", {**tv.meta, "md5": md5s["batches.meta"]})
    else:
        write_idx_files(folder)
        monkeypatch.setattr(tv, "resources", [(f, md5sum(folder / f)) for f, _ in tv.resources])


def invoke(command, project: Path) -> str:
    result = CliRunner().invoke(
        command, ["--params", str(project / "params.yaml")], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "kmnist", "cifar10"])
def test_dataset_through_all_four_stages(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = datasets.DATASETS[name]
    make_mirror(name, tmp_path / "mirror", monkeypatch)
    project = tmp_path / "project"
    (project / ".dvc").mkdir(parents=True)
    (project / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "data": {
                    "dataset": name,
                    "mirror": str(tmp_path / "mirror"),
                    "val_size": 20,
                    "augment": name == "cifar10",
                },
                "train": {"epochs": 1, "batch_size": 16, "precision": "fp32"},
            }
        )
    )
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)

    assert "copied from" in invoke(download.main, project)
    invoke(normalization_stats.main, project)
    stats = json.loads((project / "data/stats.json").read_text())
    assert len(stats["mean"]) == spec.channels and stats["count"] == N_TRAIN - 20
    invoke(train.main, project)
    out = invoke(evaluate.main, project)
    assert spec.class_names[1] in out

    evaluation = json.loads((project / "metrics/eval.json").read_text())
    assert list(evaluation["per_class_accuracy"]) == list(spec.class_names)
    assert {"top3_accuracy", "macro_precision", "macro_recall", "roc_auc"} <= set(evaluation)
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    (run,) = client.search_runs(
        [client.get_experiment_by_name("image-classification").experiment_id]
    )
    assert run.data.params["data.dataset"] == name
    assert {f"test_class_accuracy/{c}" for c in spec.class_names} <= set(run.data.metrics)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    logged = mlflow.pyfunc.load_model(model_uri(run), dst_path=str(tmp_path))
    sample = np.zeros((2, spec.channels, spec.image_size, spec.image_size), dtype=np.uint8)
    assert logged.predict(sample).shape == (2, 10)


def test_tar_member_escaping_the_target_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (tmp_path / "dest").mkdir()
    with pytest.raises(PipelineError, match=r"refusing to extract '../escaped.txt'"):
        originals.safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("arch", list(models.ARCHITECTURES))
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_every_model_has_the_right_output_shape_and_trains_one_epoch(
    arch: str, channels: int, size: int
) -> None:
    torch.manual_seed(0)
    model = models.build(arch, channels, size, 10, [0.5] * channels, [0.25] * channels, OPTIONS)
    x = torch.randint(0, 256, (64, channels, size, size), dtype=torch.uint8)
    y = torch.arange(64) % 10
    assert model.eval()(x[:3]).shape == (3, 10)
    cfg = TrainParams(
        model=arch, epochs=1, batch_size=16, precision="fp32", device="cpu", patience=None
    )
    state = fit_tiny(model, x, y, torch.arange(48), torch.arange(48, 64), cfg)
    assert len(state.history) == 1 and np.isfinite(state.history[0].train_loss)


def test_freeze_backbone_trains_only_the_classifier() -> None:
    opts = dataclasses.replace(OPTIONS, freeze_backbone=True)
    model = models.build("resnet18", 3, 32, 10, [0.5] * 3, [0.25] * 3, opts)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"net.fc.weight", "net.fc.bias"}


def test_partial_mirror_is_named_and_outputs_get_normal_permissions(
    make_project, tmp_path: Path
) -> None:
    root = make_project()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    from pipeline.core.datasets import get
    from pipeline.core.originals import local_source

    packaged = local_source(get("mnist"))
    assert packaged is not None
    shutil.copy(packaged / "train-images-idx3-ubyte.gz", mirror)  # one of the four files
    params = read_params(root / "params.yaml")
    params["data"]["mirror"] = str(mirror)
    write_params(root / "params.yaml", params)
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "download"],
        cwd=root,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0] == (
        f"data.mirror {mirror} lacks train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz; trying the next source"
    )
    assert out[1].startswith(f"mnist: copied from {packaged}")
    old = os.umask(0o022)
    try:
        run(["python", "-m", "pipeline", "normalization-stats"], root)
    finally:
        os.umask(old)
    assert stat.S_IMODE((root / "data/stats.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "data/raw").stat().st_mode) == 0o755
    assert "data/stats.json" in snapshot(root)


def test_data_for_another_model_is_refused_in_one_line_naming_both() -> None:
    spec = datasets.get("mnist")
    meta = {
        "class_names": list(spec.class_names),
        "in_channels": 1,
        "image_size": 28,
        "dataset": "mnist",
    }
    datasets.check_model_fits(spec, Path("data/raw"), meta, Path("models/model.pt"))  # fits
    for change, trained, held in (
        ({"in_channels": 3}, "10 classes at 28 px, 3 channel(s)", "10 classes at 28 px, 1 channel"),
        ({"image_size": 32}, "10 classes at 32 px", "10 classes at 28 px;"),
        ({"class_names": ["a", "b"]}, "2 classes at 28 px", "10 classes at 28 px;"),
        (
            {"class_names": list("abcdefghij")},
            "10 classes at 28 px",
            "10 classes at 28 px (other class names)",
        ),
    ):
        with pytest.raises(PipelineError) as err:
            datasets.check_model_fits(
                spec, Path("data/raw"), {**meta, **change}, Path("models/model.pt")
            )
        assert str(err.value).startswith(f"models/model.pt was trained on mnist, {trained}; ")
        assert f"; data/raw holds mnist, {held}" in str(err.value)
        assert str(err.value).endswith("; rerun the pipeline (dvc repro)")


def decoded_folder(raw: Path, classes: int, size: int) -> None:
    """`raw`/folder as the download stage leaves it: `classes` classes of 3 generated pictures each,
    decoded at `size` px."""
    from PIL import Image

    from pipeline.core import folders

    pictures = raw.parent / "pictures"
    for c in range(classes):
        (pictures / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (60 * c, 30 * i, 90)).save(pictures / f"c{c}/{i}.png")
    folders.decode(folders.scan(pictures), 3, size, raw / "folder", 1, lambda *a: None)


@pytest.mark.parametrize(
    ("model", "remedy"),
    [
        ("models/model.pt", "rerun the pipeline (dvc repro)"),
        ("--run-id 0123: its model", "restore that run's data first (dvc exp apply exp-1)"),
    ],
)
def test_the_model_and_the_data_are_each_described_as_they_are(
    tmp_path: Path, model: str, remedy: str
) -> None:
    raw = tmp_path / "raw"
    decoded_folder(raw, classes=2, size=16)
    mnist = {**{"class_names": [str(d) for d in range(10)]}, "in_channels": 1, "image_size": 28}
    folder = {"class_names": ["c0", "c1"], "in_channels": 3, "image_size": 16, "dataset": "folder"}
    assert datasets.fitting_spec(raw, folder, model, remedy).class_names == ("c0", "c1")
    refused = {
        # an MNIST model against folder pictures: not "no MNIST data there"
        "mnist": (
            {**mnist, "dataset": "mnist"},
            f"{model} was trained on mnist, 10 classes at 28 px, 1 channel(s); {raw} holds "
            f"folder, 2 classes at 16 px, 3 channel(s); {remedy}",
        ),
        # the model's 3 classes at 64 px, the data's 2 at 16: each side its own numbers
        "other folder": (
            {**folder, "class_names": ["a", "b", "c"], "image_size": 64},
            f"{model} was trained on folder, 3 classes at 64 px; {raw} holds folder, 2 classes "
            f"at 16 px; {remedy}",
        ),
    }
    for meta, message in refused.values():
        with pytest.raises(PipelineError) as err:
            datasets.fitting_spec(raw, meta, model, remedy)
        assert str(err.value) == message
    with pytest.raises(PipelineError) as err:
        datasets.fitting_spec(tmp_path / "empty", folder, model, remedy)
    assert (
        str(err.value)
        == f"{model} was trained on folder; {tmp_path / 'empty'} holds no data: {remedy}"
    )
