"""A run started from an earlier run of this pipeline, through real `dvc repro` and a real MLflow
store: a torchvision architecture trained on three classes, then fine-tuned on two from
`runs:/<id>/<model>`, the second run carrying the first one's id (lineage)."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import assert_one_line_error, create_project, run, runs
from photos import make_photo_folder
from PIL import Image

from pipeline.core import models, zoo
from pipeline.core.params import Params

pytestmark = pytest.mark.e2e

PARAMS = {
    "data": {
        "dataset": "folder",
        "folder": "data/images",
        "image_size": 32,
        "channels": 3,
        "val_size": 6,
    },
    "train": {"model": "mobilenet_v3_small", "epochs": 1, "batch_size": 16, "lr": 0.002},
}


def set_params(root: Path, **train: object) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(train)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_a_run_starts_from_an_earlier_runs_model_with_other_classes(tmp_path: Path) -> None:
    root = create_project(tmp_path / "project", PARAMS)
    make_photo_folder(root / "data/images", per_class=20)
    run(["dvc", "repro"], root)
    (first,) = runs(root)
    first_model = torch.load(root / "models/model.pt", weights_only=True)
    assert len(first_model["class_names"]) == 3 and "weights" not in first_model

    # Other classes, one more: a new head. (Not fewer: evaluate's ROC fails on two classes.)
    mirrored = root / "data/images/mirrored astronaut"
    mirrored.mkdir()
    for picture in sorted((root / "data/images/astronaut").iterdir()):
        with Image.open(picture) as img:
            img.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
                mirrored / f"{picture.stem}.png"
            )
    name = re.sub(r"[/:.%\"']", "_", first.info.run_name)  # the logged model's (tracking.model)
    uri = f"runs:/{first.info.run_id}/{name}"
    set_params(root, weights=uri)
    out = run(["dvc", "repro"], root).stdout
    assert f"from MLflow run {first.info.run_id}" in out
    second = runs(root)[-1]
    start = root / "models/start.pt"
    tags = second.data.tags
    assert tags["weights.source"] == uri
    assert tags["weights.source_run_id"] == first.info.run_id
    assert tags["weights.sha256"] == hashlib.sha256(start.read_bytes()).hexdigest()
    assert tags["normalization"] == f"run {first.info.run_id}"
    assert second.data.params["train.weights"] == uri
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert any(o["path"] == "models/start.pt" for o in lock["weights"]["outs"])
    assert any(d["path"] == "models/start.pt" for d in lock["train"]["deps"])
    model = torch.load(root / "models/model.pt", weights_only=True)
    assert model["class_names"] == ["astronaut", "cat", "coffee", "mirrored astronaut"]
    assert (model["mean"], model["weights"]) == (first_model["mean"], uri)

    # torchvision's ImageNet weights from a hub cache (they cannot be downloaded here): a freshly
    # built network's state_dict under the file name of its DEFAULT weights.
    torch_home = tmp_path / "torch"
    file = torch_home / "hub/checkpoints/mobilenet_v3_small-047dcff4.pth"
    file.parent.mkdir(parents=True)
    torch.save(zoo.imagenet_network("mobilenet_v3_small").state_dict(), file)
    set_params(root, weights="imagenet")
    run(["dvc", "repro"], root, TORCH_HOME=str(torch_home))
    model = torch.load(root / "models/model.pt", weights_only=True)
    assert (model["mean"], model["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert model["normalization"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert runs(root)[-1].data.tags["normalization"] == model["normalization"]

    # An MNIST cnn (grey pictures) for these colour ones: refused before models/start.pt changes.
    models.save(
        root / "weights/mnist-cnn.pt",
        models.build("cnn", 1, 28, 10, [0.5], [0.25], models.options_from(Params().train)),
        {"architecture": "cnn"},
    )
    before = (start.read_bytes(), start.stat().st_mtime_ns)
    for weights, model_name, needle in (
        ("models:/nope@x", "mobilenet_v3_small", "train.weights: models:/nope@x"),
        (uri, "resnet18", "is a mobilenet_v3_small, but train.model is resnet18"),
        (
            "weights/mnist-cnn.pt",
            "cnn",
            "train.weights: weights/mnist-cnn.pt is a cnn for 1-channel pictures; these are "
            "3-channel (data.channels): set data.channels: 1",
        ),
    ):
        set_params(root, weights=weights, model=model_name)
        proc = run([sys.executable, "-m", "pipeline.stages.weights"], root, check=False)
        assert_one_line_error(proc, needle)
        assert (start.read_bytes(), start.stat().st_mtime_ns) == before
    assert json.loads((root / "metrics/train.json").read_text())["mlflow_run_id"] == (
        runs(root)[-1].info.run_id
    )
