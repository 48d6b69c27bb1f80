"""The catalogue of bad input files, cross-field mistakes, hostile inputs and environment faults,
against a finished project: one line naming the file or key, exit code 2, no traceback, every file
byte-identical."""

from __future__ import annotations

import http.server
import json
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from helpers import (
    assert_one_line_error,
    assert_unchanged,
    finished_project,
    free_port,
    run,
    snapshot,
)

from pipeline.core.params import merge

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
    env: dict[str, str] = field(default_factory=dict)


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
    # cross-field: combinations each value of which is fine alone
    Case(
        "conv-blocks-shrink-images-to-nothing",
        TRAIN,
        ("train.cnn_channels", "blocks shrink 28px images"),
        params={"train": {"cnn_channels": [8] * 6}},
    ),
    Case(
        "conv-layer-beyond-memory",
        TRAIN,
        ("train.cnn_channels", "GiB"),
        params={"train": {"cnn_channels": [65536]}},
    ),
    Case(
        "mlp-beyond-memory",
        TRAIN,
        ("train.mlp_hidden", "GiB"),
        params={"train": {"model": "mlp", "mlp_hidden": [1048576, 1048576]}},
    ),
    Case(
        "validation-larger-than-training",
        ("pipeline.stages.normalization_stats",),
        ("data.val_size",),
        params={"data": {"val_size": 60000}},
    ),
    Case(
        "top-k-above-classes",
        EVALUATE,
        ("evaluate.top_k", "more than the 10 classes"),
        params={"evaluate": {"top_k": 11}},
    ),
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
    # the tracking store
    Case(
        "unknown-uri-scheme",
        TRAIN,
        ("MLFLOW_TRACKING_URI=nonsense://x", "unknown scheme"),
        env={"MLFLOW_TRACKING_URI": "nonsense://x"},
    ),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_project(tmp_path_factory.mktemp("catalogue-inputs") / "project")


def check(project: Path, case: Case, **env: str) -> None:
    """Apply the case, run it, assert the one-line error and an untouched project, undo the case."""
    originals: dict[Path, bytes | None] = {}
    for rel in [*case.files, "params.yaml"]:
        path = project / rel
        originals[path] = path.read_bytes() if path.exists() else None
    try:
        for rel, edit in case.files.items():
            (project / rel).parent.mkdir(parents=True, exist_ok=True)
            (project / rel).write_bytes(edit(originals[project / rel] or b""))
        if case.params:
            params = yaml.safe_load(originals[project / "params.yaml"])
            (project / "params.yaml").write_text(
                yaml.safe_dump(merge(params, case.params), sort_keys=False)
            )
        before = snapshot(project)
        proc = run(["python", "-m", *case.command], project, check=False, **{**case.env, **env})
        assert_one_line_error(proc, *case.needles)
        assert_unchanged(before, snapshot(project))
    finally:
        for path, data in originals.items():
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(data)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(project: Path, case: Case) -> None:
    check(project, case)


@pytest.fixture
def not_mlflow() -> Iterator[str]:
    """A web server that answers every request with 200 and plain text: /health passes, the API does
    not."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_port() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_tracking_server_that_is_not_mlflow(project: Path, not_mlflow: str) -> None:
    case = Case(
        "not-mlflow", TRAIN, (f"MLFLOW_TRACKING_URI={not_mlflow}", "not an MLflow tracking server")
    )
    check(project, case, MLFLOW_TRACKING_URI=not_mlflow)


def test_tracking_server_that_never_answers(project: Path, silent_port: str) -> None:
    case = Case("silent", TRAIN, (f"MLFLOW_TRACKING_URI={silent_port}", "unreachable"))
    check(project, case, MLFLOW_TRACKING_URI=silent_port)


def test_tracking_server_that_is_down(project: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    check(
        project,
        Case("dead", EVALUATE, (f"MLFLOW_TRACKING_URI={dead}", "unreachable")),
        MLFLOW_TRACKING_URI=dead,
    )
