"""`python -m pipeline predict` on real MNIST test images written as PNG files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from helpers import assert_one_line_error, create_project, run
from PIL import Image

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after `dvc repro` on 12,000 MNIST pictures for one epoch, shared by this file's
    tests (they add pictures to it, never change its outputs)."""
    root = create_project(
        tmp_path_factory.mktemp("predict") / "project",
        {"data": {"limit": 12000}, "train": {"epochs": 1, "batch_size": 128}},
    )
    run(["dvc", "repro"], root)
    return root


def mnist_pngs(root: Path, folder: Path, count: int) -> dict[str, str]:
    """The first `count` MNIST test pictures as grey PNG files in `folder`; {path: true class}."""
    from torchvision.datasets import MNIST

    test = MNIST(str(root / "data/raw"), train=False)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(count):
        path = folder / f"test-{i:03d}.png"
        Image.fromarray(test.data[i].numpy()).save(path)
        truth[str(path)] = str(int(test.targets[i]))
    return truth


def test_predict_prints_the_true_labels_first(trained: Path) -> None:
    root = trained
    folder = root / "samples"
    truth = mnist_pngs(root, folder, 3)

    model, header, *table = run(
        ["python", "-m", "pipeline", "predict", str(folder)], root
    ).stdout.splitlines()
    run_id = json.loads((root / "models/mlflow_run.json").read_text())["run_id"]
    assert model == f"# models/model.onnx: cnn trained on mnist, MLflow run {run_id} (onnxruntime)"
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


def test_predict_writes_nothing_to_stderr(trained: Path, tmp_path: Path) -> None:
    """The normal path warns about nothing: grey pictures (a read-only array from Pillow, which
    torch.from_numpy warns about in torch's own module, beyond pytest's filterwarnings), colour
    ones, one file and a folder."""
    truth = mnist_pngs(trained, tmp_path / "digits", 2)
    Image.new("RGB", (40, 30), "red").save(tmp_path / "colour.jpg")
    folder = run(["python", "-m", "pipeline", "predict", str(tmp_path / "digits")], trained)
    files = run(
        ["python", "-m", "pipeline", "predict", *truth, str(tmp_path / "colour.jpg")], trained
    )
    assert (folder.stderr, files.stderr) == ("", "")
    assert (len(folder.stdout.splitlines()), len(files.stdout.splitlines())) == (2 + 2, 2 + 3)


def damaged(kind: str, path: Path, good: Path) -> Path:
    """A file at `path` that cannot be read as a picture, of the given kind (made from `good`)."""
    data = good.read_bytes()
    if kind == "truncated-png":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-jpeg":
        buf = io.BytesIO()
        Image.open(good).convert("RGB").resize((64, 64)).save(buf, "JPEG")
        path.write_bytes(buf.getvalue()[:300])
    elif kind == "empty":
        path.write_bytes(b"")
    else:  # text under a picture's name
        path.write_text("not a picture")
    return path


@pytest.mark.parametrize("kinds", [["truncated-png"], ["truncated-jpeg", "empty", "text"]])
def test_unreadable_files_are_named_and_the_rest_predicted(
    trained: Path, tmp_path: Path, kinds: list[str]
) -> None:
    folder = tmp_path / "mixed"
    truth = mnist_pngs(trained, folder, 4)
    suffix = {"truncated-png": ".png", "truncated-jpeg": ".jpg", "empty": ".png", "text": ".png"}
    bad = [damaged(k, folder / f"bad-{k}{suffix[k]}", Path(next(iter(truth)))) for k in kinds]

    proc = run(["python", "-m", "pipeline", "predict", "--json", str(folder)], trained, check=False)
    assert proc.returncode == 1, proc.stderr
    assert {
        item["path"]: item["predictions"][0]["class"] for item in json.loads(proc.stdout)
    }.keys() == (truth.keys())
    lines = proc.stderr.splitlines()
    assert len(lines) == len(bad) and "Traceback" not in proc.stderr
    for line, path in zip(lines, sorted(bad), strict=True):
        assert line.startswith(f"skipped: {path}: not a readable image ("), line

    # Nothing readable: bad input, each file named, exit 2.
    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    for path in bad:
        path.rename(only_bad / path.name)
    proc = run(["python", "-m", "pipeline", "predict", str(only_bad)], trained, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert [line.split(": ")[:2] for line in proc.stderr.splitlines()] == [
        ["error", str(only_bad / path.name)] for path in sorted(bad)
    ]


def test_help_documents_the_exit_status(trained: Path) -> None:
    text = " ".join(run(["python", "-m", "pipeline", "predict", "--help"], trained).stdout.split())
    assert "Exit status: 0 every picture classified; 1 some files could not be read" in text


def test_onnx_and_torch_give_the_same_top_classes(trained: Path, tmp_path: Path) -> None:
    """On 100 test pictures predict's default (the exported model through onnxruntime) ranks the
    same classes as the torch model, with the same probabilities to the export's tolerance."""
    from pipeline.core.export import TOLERANCE

    truth = mnist_pngs(trained, tmp_path / "digits", 100)
    answers = {}
    for engine in ("auto", "torch"):
        args = ["python", "-m", "pipeline", "predict", "--engine", engine, str(tmp_path / "digits")]
        header = run(args, trained).stdout.splitlines()[0]
        assert header.endswith("(onnxruntime)" if engine == "auto" else "(torch)"), header
        answers[engine] = json.loads(run([*args, "--json", "--top-k", "5"], trained).stdout)
    onnx, torch_ = answers["auto"], answers["torch"]
    assert [a["path"] for a in onnx] == [a["path"] for a in torch_] == sorted(truth)
    for a, b in zip(onnx, torch_, strict=True):
        assert [p["class"] for p in a["predictions"]] == [p["class"] for p in b["predictions"]]
        for p, q in zip(a["predictions"], b["predictions"], strict=True):
            assert abs(p["probability"] - q["probability"]) <= TOLERANCE
    right = sum(a["predictions"][0]["class"] == truth[a["path"]] for a in onnx)
    assert right >= 90  # one epoch on 12,000 pictures; chance is 10


def test_the_onnx_path_never_imports_torch(trained: Path, tmp_path: Path) -> None:
    truth = mnist_pngs(trained, tmp_path / "digits", 3)
    code = (
        "import sys\n"
        "from pipeline_tools.predict import main\n"
        "try:\n"
        f"    main({[*truth]!r}, standalone_mode=False)\n"
        "finally:\n"
        "    print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))\n"
    )
    out = run(["python", "-c", code], trained).stdout.splitlines()
    assert out[0].endswith("(onnxruntime)") and out[-1] == "[]", out


def test_a_stale_or_missing_export_falls_back_to_torch(trained: Path, tmp_path: Path) -> None:
    """An ONNX model exported from another model.pt (the model was retrained since) is not used;
    --engine onnx without one is one line."""
    import shutil

    import torch

    from pipeline.core import models

    picture = next(iter(mnist_pngs(trained, tmp_path / "digits", 1)))
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy2(trained / "models/model.onnx", folder / "model.onnx")
    model, meta = models.load(trained / "models/model.pt")
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # retrained: other weights, other bytes
    models.save(folder / "model.pt", model, {k: v for k, v in meta.items() if k != "state_dict"})
    args = ["python", "-m", "pipeline", "predict", "--model", str(folder / "model.pt"), picture]
    proc = run(args, trained)
    assert proc.stdout.splitlines()[0].endswith("(torch)") and proc.stderr == ""

    (folder / "model.onnx").unlink()
    assert run(args, trained).stdout.splitlines()[0].endswith("(torch)")
    proc = run([*args, "--engine", "onnx"], trained, check=False)
    assert_one_line_error(proc, f"{folder / 'model.onnx'}: not found; run the evaluate stage")
