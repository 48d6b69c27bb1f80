"""The logged model behind a real `mlflow models serve` process, asked over HTTP with real MNIST
test images."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from helpers import free_port, run, runs, store

from pipeline.core import models
from pipeline.core.datasets import get, load_split
from pipeline.core.repo import clean_env

pytestmark = pytest.mark.e2e

# Loopback never goes through a proxy.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post(url: str, images: np.ndarray | list) -> tuple[int, dict]:
    """POST {"inputs": images} to /invocations; (HTTP status, JSON answer)."""
    return post_json(url, {"inputs": images.tolist() if isinstance(images, np.ndarray) else images})


def post_pictures(url: str, files: list[bytes]) -> tuple[int, dict]:
    """POST picture files as the column `image`, base64-encoded (what docs/tracking.md shows)."""
    column = [[base64.b64encode(data).decode()] for data in files]
    return post_json(url, {"dataframe_split": {"columns": ["image"], "data": column}})


def post_json(url: str, payload: dict) -> tuple[int, dict]:
    """POST `payload` as JSON to /invocations; (HTTP status, JSON answer)."""
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        f"{url}/invocations", body, {"Content-Type": "application/json"}
    )
    try:
        with OPENER.open(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A trained tiny project and `mlflow models serve` on its logged model; yields (project,
    url)."""
    from helpers import create_project

    root = create_project(tmp_path_factory.mktemp("serving") / "project")
    run(["dvc", "repro", "train"], root)
    model_uri = json.loads((root / "models/mlflow_run.json").read_text())["model_uri"]
    port = free_port()
    # The server outlives this statement; the file closes with the process.
    log = open(root.parent / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            "mlflow",
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=root,
        env=clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with OPENER.open(f"{url}/ping", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        "mlflow models serve did not start: "
                        f"{(root.parent / 'serve.log').read_text()[-3000:]}"
                    )
                time.sleep(0.25)
        yield root, url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_uint8_and_float_images_get_the_model_s_answer(served) -> None:
    root, url = served
    images, labels = load_split(get("mnist"), root / "data/raw", train=False)
    images, labels = images[:64].numpy(), labels[:64].numpy()
    model, _ = models.load(root / "models/model.pt")
    import torch

    with torch.no_grad():
        local = model(torch.from_numpy(images)).numpy()

    status, answer = post(url, images)  # N×1×28×28, integers 0-255
    assert status == 200, answer
    served_uint8 = np.array(answer["predictions"])
    assert served_uint8.shape == (64, 10)
    np.testing.assert_allclose(served_uint8, local, rtol=1e-4, atol=1e-4)
    assert (served_uint8.argmax(1) == labels).mean() > 0.7  # one tiny epoch; chance is 0.1

    status, answer = post(url, images.astype(np.float32) / 255)  # floats in [0, 1]: the same answer
    assert status == 200, answer
    np.testing.assert_allclose(np.array(answer["predictions"]), local, rtol=1e-4, atol=1e-4)

    status, answer = post(url, images[:, 0])  # N×28×28: one channel implied
    assert status == 200, answer
    assert np.array(answer["predictions"]).argmax(1).tolist() == local.argmax(1).tolist()

    # Pictures of any size: resized and centre-cropped as the training pictures were (predict's
    # function).
    from PIL import Image

    from pipeline.core.images import prepare

    bigger = np.stack([np.asarray(Image.fromarray(p[0]).resize((56, 70))) for p in images[:8]])[
        :, None
    ]
    status, answer = post(url, bigger)
    assert status == 200, answer
    expected = np.stack([prepare(Image.fromarray(p[0]), 1, 28) for p in bigger])
    with torch.no_grad():
        np.testing.assert_allclose(
            np.array(answer["predictions"]),
            model(torch.from_numpy(expected)).numpy(),
            rtol=1e-4,
            atol=1e-4,
        )


@pytest.mark.parametrize(
    "images, needles",
    [
        (np.zeros((2, 3, 28, 28), np.uint8), ["shape (N, 1, H, W)", "got (2, 3, 28, 28)"]),
        (
            np.zeros((2, 1, 0, 32), np.uint8),
            ["resized to 28×28", "got (2, 1, 0)"],
        ),  # JSON: [[[]], [[]]]
        (
            np.full((1, 1, 28, 28), 2.0),
            ["float pixels must be in [0, 1]"],
        ),  # 0-255 values sent as floats
        (np.full((1, 1, 28, 28), 300), ["integer pixels must be 0-255"]),
        ([[[1, 2], [3]]], ["rectangular"]),
    ],
    ids=["three-channels", "empty-picture", "float-0-255", "int-out-of-range", "ragged"],
)
def test_bad_input_is_a_400_with_one_readable_line(served, images, needles) -> None:
    status, answer = post(served[1], images)
    assert status == 400, answer
    message = answer["message"]
    assert "\n" not in message and len(message) < 200, message
    for needle in needles:
        assert needle in message, message


def test_logged_model_is_named_after_its_run(served) -> None:
    root, _ = served
    (only,) = runs(root)
    info = json.loads((root / "models/mlflow_run.json").read_text())
    model = store(root).get_logged_model(info["model_uri"].removeprefix("models:/"))
    assert (
        model.name == only.info.run_name.replace(".", "_")
        and model.source_run_id == only.info.run_id
    )


def picture_files(images: np.ndarray) -> dict[str, bytes]:
    """Two MNIST test digits as picture files: a grey PNG at twice the size, a colour JPEG of
    another shape; and a JPEG cut short."""
    from PIL import Image

    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(images[0, 0]).resize((56, 56)).save(png, "PNG")
    Image.fromarray(images[1, 0]).convert("RGB").resize((60, 44)).save(jpeg, "JPEG", quality=95)
    return {
        "png": png.getvalue(),
        "jpeg": jpeg.getvalue(),
        "truncated-jpeg": jpeg.getvalue()[: len(jpeg.getvalue()) // 3],
    }


def test_base64_picture_files_get_the_model_s_answer(served, tmp_path) -> None:
    """PNG and JPEG files of any size and mode, decoded as the training pictures were
    (core.images.read on the same bytes), give the model's logits."""
    import torch

    from pipeline.core.images import read

    root, url = served
    images, labels = load_split(get("mnist"), root / "data/raw", train=False)
    files = picture_files(images[:2].numpy())
    status, answer = post_pictures(url, [files["png"], files["jpeg"]])
    assert status == 200, answer
    expected = []
    for name in ("png", "jpeg"):
        (tmp_path / name).write_bytes(files[name])
        expected.append(read(tmp_path / name, 1, 28))
    model, _ = models.load(root / "models/model.pt")
    with torch.no_grad():
        local = model(torch.from_numpy(np.stack(expected))).numpy()
    served_logits = np.array(answer["predictions"])
    np.testing.assert_allclose(served_logits, local, rtol=1e-4, atol=1e-4)
    assert served_logits.argmax(1).tolist() == labels[:2].tolist()  # plain digits, clearly drawn


@pytest.mark.parametrize(
    "pictures, needles",
    [
        (["png", "truncated-jpeg"], ["image 1: not a readable picture ("]),
        (["empty"], ["image 0: not a readable picture (empty file"]),
        (["not-base64"], ["image 0: not base64"]),
    ],
    ids=["truncated-jpeg", "empty", "not-base64"],
)
def test_an_undecodable_picture_is_a_400_with_one_line(served, pictures, needles) -> None:
    root, url = served
    images, _ = load_split(get("mnist"), root / "data/raw", train=False)
    files = {**picture_files(images[:2].numpy()), "empty": b""}
    if pictures == ["not-base64"]:
        status, answer = post_json(
            url, {"dataframe_split": {"columns": ["image"], "data": [["%%% not base64 %%%"]]}}
        )
    else:
        status, answer = post_pictures(url, [files[name] for name in pictures])
    assert status == 400, answer
    message = answer["message"]
    assert "\n" not in message and len(message) < 200, message
    for needle in needles:
        assert needle in message, message
