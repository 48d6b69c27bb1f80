"""`predict --model FILE` with a file that is no model: one short line naming --model and the file,
never torch's weights_only paragraph (which suggests running the file's code); a missing file named
by the user is "no such file", and only the default path's absence names the stage that makes
it."""

from __future__ import annotations

import pathlib
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, create_project, run
from PIL import Image


def make(root: Path, name: str) -> str:
    """The model file of case `name` in `root` (a project), its path relative to `root`."""
    path = root / {"text": "notes.txt", "folder": "models"}.get(name, f"models/{name}")
    if name == "text":  # any text file of the user's
        path.write_text("taken on holiday\n")
    elif name == "hostile.pt":  # a class outside the weights-only allowlist
        torch.save({"state_dict": {}, "x": pathlib.PurePosixPath("a")}, path)
    elif name == "truncated.pt":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:500])
    elif name == "other-zip.pt":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("a.txt", "hello")
    elif name == "text.onnx":
        path.write_text("not a model\n")
    return path.relative_to(root).as_posix()


CASES = {
    # model file → what the one line says after "error: --model <file>: "
    "text": "not a model written by the train stage (not the zip archive torch.save writes",
    "hostile.pt": "not a model written by the train stage (it holds objects besides weights",
    "truncated.pt": "not a model written by the train stage (not the zip archive",
    "other-zip.pt": "not a model written by the train stage (",
    "text.onnx": "not an ONNX model onnxruntime can run (",
    "nope.onnx": "no such file",
    "nope.pt": "no such file",
    "folder": "a folder, not a model file",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = create_project(tmp_path_factory.mktemp("model-option") / "project")
    (root / "models").mkdir(exist_ok=True)
    Image.new("L", (28, 28), 128).save(root / "digit.png")
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_a_model_option_that_is_no_model_is_one_short_line(project: Path, case: str) -> None:
    model = make(project, case)
    proc = run(
        ["python", "-m", "pipeline", "predict", "--model", model, "digit.png"], project, check=False
    )
    assert_one_line_error(proc, f"error: --model {model}: {CASES[case]}")
    assert "weights_only" not in proc.stderr and "run the" not in proc.stderr
    assert len(proc.stderr.strip()) <= 220, proc.stderr


def test_the_default_model_missing_names_the_stage_that_makes_it(project: Path) -> None:
    proc = run(["python", "-m", "pipeline", "predict", "digit.png"], project, check=False)
    assert_one_line_error(proc, "error: models/model.pt: not found; run the train stage first")
