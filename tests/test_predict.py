"""`python -m pipeline predict` on real MNIST test images written as PNG files."""

from __future__ import annotations

import json

import pytest
from helpers import run
from PIL import Image

pytestmark = pytest.mark.e2e


def test_predict_prints_the_true_labels_first(make_project) -> None:
    root = make_project({"data": {"limit": 12000}, "train": {"epochs": 1, "batch_size": 128}})
    run(["dvc", "repro"], root)
    from torchvision.datasets import MNIST

    test = MNIST(str(root / "data/raw"), train=False)
    folder = root / "samples"
    folder.mkdir()
    truth = {}
    for i in range(3):
        path = folder / f"test-{i}.png"
        Image.fromarray(test.data[i].numpy()).save(path)
        truth[str(path)] = str(int(test.targets[i]))

    model, header, *table = run(
        ["python", "-m", "pipeline", "predict", str(folder)], root
    ).stdout.splitlines()
    run_id = json.loads((root / "models/mlflow_run.json").read_text())["run_id"]
    assert model == f"# models/model.pt: cnn trained on mnist, MLflow run {run_id}"
    assert header.split() == [
        "image",
        "class",
        "1",
        "(probability)",
        "class",
        "2",
        "(probability)",
        "class",
        "3",
        "(probability)",
    ]
    assert len(table) == 3
    for line in table:
        path, first, prob, *rest = line.split()
        assert (
            first == truth[path] and 0.5 < float(prob) <= 1.0 and len(rest) == 4
        )  # two more (class, p)

    as_json = json.loads(
        run(["python", "-m", "pipeline", "predict", "--json", "--top-k", "2", *truth], root).stdout
    )
    for item in as_json:
        assert item["predictions"][0]["class"] == truth[item["path"]]
        assert len(item["predictions"]) == 2
        assert item["predictions"][0]["probability"] >= item["predictions"][1]["probability"]

    # A colour image of another size is converted and resized, not refused.
    Image.new("RGB", (64, 48), "white").save(root / "big.jpg")
    assert (
        run(["python", "-m", "pipeline", "predict", "big.jpg"], root)
        .stdout.splitlines()[2]
        .startswith("big.jpg")
    )
    (root / "notes.png").write_text("not an image")
    bad = run(["python", "-m", "pipeline", "predict", "notes.png"], root, check=False)
    assert (
        bad.returncode == 2
        and bad.stderr.strip()
        == "error: notes.png: not a readable image (not a picture Pillow can read)"
    )
