"""models/model.pt holds tensors and plain values only: no class of this package is pickled into
it, so renaming a class or a module (layers.ImageClassifier became layers.NormalizedModel) keeps
every saved model loadable."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from pipeline.core import models
from pipeline.core.layers import NormalizedModel
from pipeline.core.params import TrainParams


@pytest.mark.parametrize("architecture", list(models.ARCHITECTURES))
def test_a_model_file_names_no_class_and_loads_back(architecture: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    options = models.options_from(TrainParams())
    model = models.build(architecture, 1, 28, 3, [0.1], [0.3], options)
    meta = {
        "architecture": architecture,
        "options": models.options_dict(options),
        "dataset": "mnist",
        "in_channels": 1,
        "image_size": 28,
        "class_names": ["a", "b", "c"],
        "mean": [0.1],
        "std": [0.3],
    }
    models.save(tmp_path / "model.pt", model, meta)
    with zipfile.ZipFile(tmp_path / "model.pt") as archive:
        (pickled,) = [name for name in archive.namelist() if name.endswith("data.pkl")]
        code = archive.read(pickled)
    # A pickled class is stored by module and name: none of this package's may appear.
    assert b"pipeline" not in code and b"NormalizedModel" not in code
    assert set(model.state_dict()) == {"mean", "std"} | {
        k for k in model.state_dict() if k.startswith("net.")
    }
    loaded, stored = models.load(tmp_path / "model.pt")
    assert isinstance(loaded, NormalizedModel) and stored["class_names"] == ["a", "b", "c"]
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(models.logits(loaded, images), models.logits(model.eval(), images))
