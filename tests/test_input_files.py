"""Bad input files against a finished project: statistics, model and run files, raw data cut or
rewritten, hostile images, download mirrors. Each stops with one line naming the file, exit code 2,
no traceback, every file byte-identical. (Bad parameters: test_param_errors.py; the tracking store:
test_tracking_store.py.)"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import finished_project, refused_in_one_line

pytestmark = pytest.mark.e2e

RAW = "data/raw/MNIST/raw"
Edit = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Case:
    name: str
    command: tuple[str, ...]  # after `python -m`
    needles: tuple[str, ...]
    files: dict[str, Edit] = field(default_factory=dict)  # relative path → new content from the old
    params: dict = field(default_factory=dict)


def stats(**changes: object) -> Edit:
    """A JSON file (data/stats.json, models/mlflow_run.json) with some fields changed."""
    return lambda old: json.dumps({**json.loads(old), **changes}).encode()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header and holds no pixels (what a decompression bomb starts
    with)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


TRAIN = ("pipeline.stages.train",)
EVALUATE = ("pipeline.stages.evaluate",)
CASES = [
    # statistics that would train on NaNs
    Case(
        "zero-std",
        TRAIN,
        ("data/stats.json", "std finite and > 0"),
        files={"data/stats.json": stats(std=[0.0])},
    ),
    Case(
        "negative-std",
        TRAIN,
        ("data/stats.json", "std finite and > 0"),
        files={"data/stats.json": stats(std=[-1.0])},
    ),
    Case(
        "nan-mean",
        TRAIN,
        ("data/stats.json", "every mean must be finite"),
        files={"data/stats.json": stats(mean=[float("nan")])},
    ),
    Case(
        "stats-for-three-channels",
        TRAIN,
        ("data/stats.json", "3 means"),
        files={"data/stats.json": stats(mean=[0.1] * 3, std=[0.3] * 3)},
    ),
    Case(
        "stats-of-another-dataset",
        TRAIN,
        ("data/stats.json", "statistics are for cifar10"),
        files={"data/stats.json": stats(dataset="cifar10")},
    ),
    Case(
        "stats-not-json",
        TRAIN,
        ("data/stats.json", "not a statistics file"),
        files={"data/stats.json": lambda old: b"{"},
    ),
    # model and run files
    Case(
        "empty-model",
        EVALUATE,
        ("models/model.pt", "empty file"),
        files={"models/model.pt": lambda old: b""},
    ),
    Case(
        "truncated-model",
        EVALUATE,
        ("models/model.pt", "not a model written by the train stage"),
        files={"models/model.pt": lambda old: old[: len(old) // 2]},
    ),
    Case(
        "foreign-model",
        EVALUATE,
        ("models/model.pt", "not a model written by the train stage"),
        files={"models/model.pt": lambda old: b"PK\x03\x04 not a torch archive" * 10},
    ),
    Case(
        "run-file-without-experiment",
        EVALUATE,
        ("models/mlflow_run.json", "no experiment name"),
        files={"models/mlflow_run.json": stats(experiment_name="")},
    ),
    Case(
        "run-file-not-json",
        EVALUATE,
        ("models/mlflow_run.json", "not a run file"),
        files={"models/mlflow_run.json": lambda old: b"run"},
    ),
    Case(
        "predict-with-empty-model",
        ("pipeline", "predict", "plots/train_samples.png"),
        ("models/model.pt", "empty"),
        files={"models/model.pt": lambda old: b""},
    ),
    # raw data cut or rewritten
    Case(
        "images-cut-to-their-header",
        TRAIN,
        ("data/raw", "damaged or incomplete"),
        files={f"{RAW}/train-images-idx3-ubyte": lambda old: old[:16]},
    ),
    Case(
        "labels-for-fewer-images",
        TRAIN,
        ("data/raw", "60000 images but 100 labels"),
        files={
            f"{RAW}/train-labels-idx1-ubyte": lambda old: (
                struct.pack(">II", 0x801, 100) + old[8:108]
            )
        },
    ),
    Case(
        "labels-out-of-range",
        ("pipeline.stages.normalization_stats",),
        ("data/raw", "labels outside 0..9"),
        files={f"{RAW}/train-labels-idx1-ubyte": lambda old: old[:8] + b"\x0b" + old[9:]},
    ),
    # hostile images and missing paths for predict
    Case(
        "decompression-bomb",
        ("pipeline", "predict", "bomb.png"),
        ("bomb.png", "not a readable image"),
        files={"bomb.png": lambda old: png_header(20000, 20000)},
    ),
    Case(
        "image-too-large",
        ("pipeline", "predict", "huge.png"),
        ("huge.png", "too large"),
        files={"huge.png": lambda old: png_header(9000, 9000)},
    ),
    Case(
        "text-as-image",
        ("pipeline", "predict", "notes.png"),
        ("notes.png", "not a readable image"),
        files={"notes.png": lambda old: b"not an image"},
    ),
    Case(
        "missing-image",
        ("pipeline", "predict", "nowhere.png"),
        ("nowhere.png", "no such file or folder"),
    ),
    # download sources
    Case(
        "mirror-folder-missing",
        ("pipeline.stages.download",),
        ("data.mirror", "does not exist"),
        params={"data": {"mirror": "no-such-folder"}},
    ),
    Case(
        "mirror-with-corrupt-file",
        ("pipeline.stages.download",),
        ("train-images-idx3-ubyte.gz: MD5",),
        params={"data": {"mirror": "mirror"}},
        files={
            f"mirror/{n}": lambda old: b"not mnist"
            for n in (
                "train-images-idx3-ubyte.gz",
                "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz",
            )
        },
    ),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_project(tmp_path_factory.mktemp("input-files") / "project")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(project: Path, case: Case) -> None:
    refused_in_one_line(
        project, ["python", "-m", *case.command], case.needles, case.files, case.params
    )
