"""The export: models/model.onnx from every architecture, its metadata, its parity check, and the
evaluate stage exporting in a real `dvc repro` with a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import assert_one_line_error, create_project, run, runs, store

from pipeline.core import export, models
from pipeline.core.errors import PipelineError
from pipeline.core.params import TrainParams


def built(architecture: str, channels: int, size: int, **options: object):  # -> (model, meta)
    """A freshly initialised model of `architecture` and the metadata model.pt would hold."""
    torch.manual_seed(0)
    opts = models.options_from(TrainParams(**options))
    mean, std = [0.2] * channels, [0.3] * channels
    names = [f"class-{i}" for i in range(5)]
    model = models.build(architecture, channels, size, len(names), mean, std, opts).eval()
    meta = {
        "class_names": names,
        "in_channels": channels,
        "image_size": size,
        "mean": mean,
        "std": std,
        "architecture": architecture,
        "dataset": "folder",
    }
    return model, meta


@pytest.mark.parametrize(
    "architecture, channels, size, options",
    [
        ("cnn", 1, 28, {}),
        ("cnn", 3, 32, {"cnn_stem": "pool", "batch_norm": True, "dropout": 0.5}),
        ("mlp", 1, 28, {}),
        ("resnet", 3, 32, {}),
        ("resnet18", 3, 40, {}),
    ],
    ids=["cnn-grey", "cnn-colour-bn", "mlp", "resnet", "resnet18-large-stem"],
)
def test_onnx_model_answers_as_the_torch_model_with_its_metadata(
    architecture: str, channels: int, size: int, options: dict, tmp_path: Path
) -> None:
    model, meta = built(architecture, channels, size, **options)
    images = np.random.default_rng(0).integers(0, 256, (37, channels, size, size), dtype=np.uint8)
    reference = models.logits(model, torch.from_numpy(images)).numpy()
    path = tmp_path / "model.onnx"
    path.write_bytes(export.to_onnx(model, meta))

    session = export.Session(path)
    result = export.parity(reference, session.logits(images))
    assert result.problem() is None and result.top1_agreement == 1.0, result
    assert result.max_abs_prob_diff <= export.TOLERANCE
    assert session.logits(images[:1]).shape == (1, 5)  # any batch size
    assert export.read_metadata(path) == {**meta, "source_sha256": ""}


def test_parity_refuses_another_top_class_or_probabilities_beyond_the_tolerance() -> None:
    logits = np.random.default_rng(1).normal(size=(200, 10)).astype(np.float32)
    assert export.parity(logits, logits).problem() is None

    swapped = logits.copy()
    top = swapped[7].argmax()
    swapped[7, top] = swapped[7].min() - 1  # picture 7 gets another top class
    assert "for 1 of 200 test pictures" in export.parity(logits, swapped).problem()

    shifted = logits.copy()
    shifted[3] *= 1.01  # the same order, probabilities a few 1e-3 apart: a bf16-sized error
    result = export.parity(logits, shifted)
    assert result.top1_agreement == 1.0
    assert "differ from the torch model's by up to" in result.problem()
    assert "tolerance 1e-04" in result.problem()

    nan = logits.copy()
    nan[0, 0] = np.nan
    assert export.parity(logits, nan).problem() is not None


def test_a_file_that_is_not_an_onnx_model_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(PipelineError, match="not an ONNX model onnxruntime can run"):
        export.Session(path)


@pytest.mark.e2e
def test_evaluate_exports_checks_and_logs_into_the_run(tmp_path: Path) -> None:
    root = create_project(tmp_path / "project")
    first = run(["dvc", "repro"], root)
    out = first.stdout
    assert "Running stage 'export'" not in out  # no stage of its own: evaluate exports
    # The first run creates the MLflow store: MLflow announced its tables at INFO mid-log.
    assert " INFO " not in out + first.stderr, out + first.stderr
    assert "models/model.onnx: the same top class as the fp32 torch model on all 10000" in out

    metrics = json.loads((root / "metrics/export.json").read_text())
    assert metrics["top1_agreement"] == 1.0 and metrics["test_images"] == 10000
    assert 0 <= metrics["max_abs_prob_diff"] <= metrics["tolerance"] == export.TOLERANCE
    _, meta = models.load(root / "models/model.pt")
    exported = export.read_metadata(root / "models/model.onnx")
    assert exported == {
        **{k: meta[k] for k in exported if k != "source_sha256"},
        "source_sha256": export.sha256(root / "models/model.pt"),
    }
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["evaluate"]
    assert {"models/model.onnx", "metrics/export.json"} <= {o["path"] for o in lock["outs"]}

    (only,) = runs(root)
    assert only.data.metrics["export.top1_agreement"] == 1.0
    assert only.data.metrics["export.max_abs_prob_diff"] == metrics["max_abs_prob_diff"]
    logged = {a.path for a in store(root).list_artifacts(only.info.run_id)}
    assert "model.onnx" in logged

    # Right after a run nothing is out of date; run again, the stage warns about nothing (torch's
    # exporter deprecation notices included) and writes the same bytes.
    assert json.loads(run(["dvc", "status", "--json"], root).stdout) == {}
    onnx_bytes = (root / "models/model.onnx").read_bytes()
    again = run(["python", "-m", "pipeline.stages.evaluate"], root)
    assert again.stderr == "" and (root / "models/model.onnx").read_bytes() == onnx_bytes
    # A damaged model stops the stage with one line and leaves the ONNX model, its metrics and the
    # test metrics as they were.
    outputs = ("models/model.onnx", "metrics/export.json", "metrics/eval.json")
    before = [(root / p).read_bytes() for p in outputs]
    (root / "models/model.pt").write_bytes(b"damaged")
    proc = run(["python", "-m", "pipeline.stages.evaluate"], root, check=False)
    assert_one_line_error(proc, "models/model.pt: not a model written by the train stage")
    assert [(root / p).read_bytes() for p in outputs] == before
