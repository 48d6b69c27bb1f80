"""Your own pictures through the real pipeline: a folder of photographs, versioned with `dvc add`,
trained end to end with resnet18 at 64 px, tracked in MLflow, predicted on held-out pictures. (A
folder's mistakes at the stage: test_folders.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import (
    create_project,
    run,
    runs,
    store,
)
from photos import held_out, make_photo_folder
from PIL import Image

pytestmark = pytest.mark.e2e

FOLDER_PARAMS = {
    "data": {"dataset": "folder", "folder": "data/images", "image_size": 64, "channels": 3},
    "train": {"model": "resnet18", "epochs": 4, "batch_size": 16, "lr": 0.002},
}
# Class folders as people name them: spaces and any Unicode.
RENAMED = {"cat": "chat noir", "coffee": "café crème"}


def photo_project(root: Path, per_class: int = 40) -> Path:
    """A project whose data/images holds real photographs in three classes (two renamed), added to
    DVC."""
    create_project(root, FOLDER_PARAMS)
    images = make_photo_folder(root / "data/images", per_class=per_class)
    for old, new in RENAMED.items():
        (images / old).rename(images / new)
    (images / "astronaut" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (images / "chat noir" / "notes.txt").write_text("taken on holiday")
    (images / "chat noir" / "broken.png").write_bytes(
        Path(next((images / "astronaut").glob("*.png"))).read_bytes()[:300]
    )
    run(["dvc", "add", "data/images"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "pictures"], root)
    return root


def test_photographs_train_end_to_end_and_predict_names_held_out_pictures(tmp_path: Path) -> None:
    root = photo_project(tmp_path / "project")
    proc = run(["dvc", "repro"], root)
    assert (
        "skipped 1 picture(s) that could not be read (first: chat noir/broken.png, " in proc.stdout
    ), proc.stdout
    assert "1 other file(s) (first: chat noir/notes.txt" in proc.stdout, proc.stdout
    report = json.loads((root / "data/raw/folder/report.json").read_text())
    assert report["classes"] == ["astronaut", "café crème", "chat noir"]
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons["astronaut/.DS_Store"] == reasons["chat noir/notes.txt"] == "not a picture file"
    assert reasons["chat noir/broken.png"].startswith(("cannot be opened", "truncated or damaged"))
    assert (
        report["splits"]["train"]["count"] + report["splits"]["test"]["count"] == 3 * 40
    )  # test: a fifth
    evaluation = json.loads((root / "metrics/eval.json").read_text())
    assert list(evaluation["per_class_accuracy"]) == report["classes"]
    assert evaluation["accuracy"] > 0.6, evaluation
    # The export of this resnet18 at 64 px, checked on every test picture.
    parity = json.loads((root / "metrics/export.json").read_text())
    assert parity["top1_agreement"] == 1.0, parity
    assert parity["test_images"] == report["splits"]["test"]["count"], parity

    (only,) = runs(root)
    assert (
        only.data.tags["dataset"] == "folder"
        and only.data.tags["dataset.digest"] == report["digest"]
    )
    assert "test_class_accuracy/café crème" in only.data.metrics
    assert "report.json" in {a.path for a in store(root).list_artifacts(only.info.run_id)}

    pictures = held_out(tmp_path / "held-out")
    out = json.loads(
        run(
            ["python", "-m", "pipeline", "predict", "--json", *[str(p) for p, _ in pictures]], root
        ).stdout
    )
    named = [item["predictions"][0]["class"] for item in out]
    # The default reads models/model.onnx through onnxruntime; torch's answers are the same.
    files = [str(p) for p, _ in pictures]
    by_torch = run(
        ["python", "-m", "pipeline", "predict", "--json", "--engine", "torch", *files], root
    )
    assert [item["predictions"][0]["class"] for item in json.loads(by_torch.stdout)] == named
    truth = [RENAMED.get(name, name) for _, name in pictures]
    pairs = list(zip(named, truth, strict=True))
    assert sum(a == b for a, b in pairs) >= 6, pairs

    # The folder is the download stage's dependency: nothing reruns untouched, one new picture
    # reruns the chain.
    assert "Running stage" not in run(["dvc", "repro"], root).stdout
    Image.open(pictures[0][0]).save(root / "data/images/astronaut/new.png")
    proc = run(["dvc", "repro", "normalization-stats"], root)
    assert (
        "Running stage 'download'" in proc.stdout
        and "Running stage 'normalization-stats'" in proc.stdout
    )
