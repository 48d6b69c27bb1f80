"""`python -m pipeline mistakes`: on a real trained folder project with planted label noise, the
moved pictures come first; the listing's orders, names and sources; a bad store or run is one
line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    assert_one_line_error,
    create_project,
    free_port,
    read_params,
    run,
    runs,
    write_params,
)
from PIL import Image

from pipeline.core import datasets
from pipeline_tools import mistakes

pytestmark = pytest.mark.e2e

SHADES = {"dark": 20, "mid": 110, "light": 200}
MOVED = ["light/3.png", "light/7.png"]  # planted into dark/: labelled dark, look light
PARAMS = {
    "data": {
        "dataset": "folder",
        "folder": "data/images",
        "image_size": 12,
        "channels": 1,
        "val_size": 6,
        "limit": None,
    },
    "train": {"model": "mlp", "mlp_hidden": [16], "epochs": 6, "batch_size": 8, "patience": None},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained project: three shades of noise, 30 training pictures each, two light ones moved
    into dark/."""
    root = create_project(tmp_path_factory.mktemp("mistakes") / "p", PARAMS)
    rng = np.random.default_rng(0)
    for split, count in (("train", 30), ("test", 8)):
        for cls, shade in SHADES.items():
            folder = root / "data/images" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(shade, shade + 40, (12, 12), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    for rel in MOVED:
        shutil.move(
            root / "data/images/train" / rel,
            root / "data/images/train/dark" / Path(rel).name.replace(".png", "-moved.png"),
        )
    run(["dvc", "repro"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "results"], root)
    return root


def listing(root: Path, *args: str, **env: str) -> list[dict]:
    return json.loads(
        run(["python", "-m", "pipeline", "mistakes", "--json", *args], root, **env).stdout
    )


def test_planted_label_noise_comes_first(project: Path) -> None:
    rows = listing(project, "--split", "train", "--top", str(2 * len(MOVED)))
    moved = {"train/dark/3-moved.png", "train/dark/7-moved.png"}
    found = [r for r in rows if r["picture"] in moved]
    assert len(found) >= len(MOVED) / 2, rows
    for row in found:
        assert (row["true"], row["predicted"]) == ("dark", "light"), row
    losses = [r["loss"] for r in rows]
    assert losses == sorted(losses, reverse=True)


def test_confident_lists_only_other_classes_and_run_id_scores_the_runs_model(project: Path) -> None:
    rows = listing(project, "--split", "train", "--confident", "--top", "50")
    assert rows and all(r["true"] != r["predicted"] for r in rows)
    probs = [r["probability"] for r in rows]
    assert probs == sorted(probs, reverse=True)
    test_rows = listing(project, "--split", "test", "--top", "5")
    assert len(test_rows) == 5 and all(r["picture"].startswith("test/") for r in test_rows)
    (only,) = runs(project)
    scored = run(
        [
            *("python", "-m", "pipeline", "mistakes", "--json", "--split", "test", "--top", "5"),
            *("--run-id", only.info.run_id),
        ],
        project,
    )
    assert json.loads(scored.stdout) == test_rows
    assert scored.stderr == ""  # no MLflow download progress bar
    table = run(["python", "-m", "pipeline", "mistakes", "--top", "3"], project).stdout.splitlines()
    assert table[1].split() == ["picture", "true", "predicted", "probability", "loss"]
    assert len(table) == 5


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("unknown-run", ("--run-id", "no run 0123abcd")),
        ("damaged-store", ("MLflow store",)),
        ("silent-server", ("MLFLOW_TRACKING_URI", "unreachable")),
    ],
)
def test_a_bad_run_or_store_is_one_line(
    project: Path, tmp_path: Path, case: str, needles: tuple
) -> None:
    env = {}
    if case == "damaged-store":
        bad = tmp_path / "mlflow.db"
        bad.write_bytes(b"not a database" * 100)
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{bad}"
    elif case == "silent-server":
        env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"
    proc = run(
        ["python", "-m", "pipeline", "mistakes", "--run-id", "0123abcd"],
        project,
        check=False,
        **env,
    )
    assert_one_line_error(proc, *needles)


def test_built_in_pictures_are_named_by_split_and_index() -> None:
    spec = datasets.get("mnist")
    assert mistakes.picture_names(spec, "test", 3) == ["test/0", "test/1", "test/2"]
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [0.0, 9.0]])
    rows = mistakes.rank(["a", "b", "c"], torch.tensor([0, 0, 1]), logits, ["x", "y"], 2, False)
    assert [r.picture for r in rows] == ["b", "a"] and rows[0].predicted == "y"
    confident = mistakes.rank(["a", "b", "c"], torch.tensor([1, 0, 0]), logits, ["x", "y"], 5, True)
    assert [r.picture for r in confident] == ["c", "a", "b"]


def test_other_data_names_the_run_and_how_to_restore_its_data(
    project: Path, tmp_path: Path
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(project, root, symlinks=True)
    params = read_params(root / "params.yaml")
    params["data"]["image_size"] = 16  # data/raw decoded again: other pictures than the model's
    write_params(root / "params.yaml", params)
    run(["python", "-m", "pipeline.stages.download"], root)
    (only,) = runs(root)
    trained = "was trained on folder, 3 classes at 12 px; data/raw holds folder, 3 classes at 16 px"
    proc = run(
        ["python", "-m", "pipeline", "mistakes", "--run-id", only.info.run_id], root, check=False
    )
    assert_one_line_error(
        proc,
        f"error: --run-id {only.info.run_id}: its model {trained}; restore that run's data first "
        f"(git checkout {only.data.tags['git.commit'][:12]}, then dvc checkout)",
    )
    assert "dvc repro" not in proc.stderr and str(tmp_path) not in proc.stderr
    proc = run(["python", "-m", "pipeline", "mistakes"], root, check=False)
    assert_one_line_error(proc, f"error: models/model.pt {trained}; rerun the pipeline (dvc repro)")


def test_report_says_how_many_pictures_changed_per_class(project: Path, tmp_path: Path) -> None:
    """Run last: it changes the project's pictures (the others only read them)."""
    train = project / "data/images/train"
    for i in (10, 11, 12):  # three mid pictures relabelled light, one dark one removed
        shutil.move(train / "mid" / f"{i}.png", train / "light" / f"mid-{i}.png")
    (train / "dark" / "0.png").unlink()
    run(["dvc", "repro"], project)
    text = run(["python", "-m", "pipeline", "report", "--baseline", "HEAD"], project).stdout
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in text.split("## Data", 1)[1].splitlines()
        if line.startswith("| ") and not line.startswith("| class")
    }
    assert rows["mid"][:3] == ["0", "3", "0"], text
    assert rows["light"][:3] == ["3", "0", "0"], text
    assert rows["dark"][:3] == ["0", "1", "0"], text
    assert "git's blob ids" in text, text
    # Training pictures per class (report.json): 2 light ones were planted in dark/ at the start.
    assert [rows[c][3] for c in ("dark", "light", "mid")] == ["32 → 31", "28 → 31", "30 → 27"]
    assert rows["mid"][4] == "8 → 8" and rows["mid"][5].count("→") == 1, text


def test_confident_with_nothing_wrong_says_so() -> None:
    """A new user's --confident on a split the model gets right printed a header and nothing."""
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    rows = mistakes.rank(["a", "b"], torch.tensor([0, 1]), logits, ["x", "y"], 5, True)
    assert rows == []
    assert mistakes.nothing_wrong("test") == (
        "the model classifies every picture of the test split right"
    )
