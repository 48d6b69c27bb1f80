"""Your own pictures through the real pipeline: a folder of photographs, versioned with `dvc add`,
trained end to end with resnet18 at 64 px, tracked in MLflow, predicted on held-out pictures; and a
folder's mistakes at the stage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import (
    OTHER_LR,
    assert_one_line_error,
    assert_unchanged,
    create_project,
    run,
    runs,
    snapshot,
    store,
)
from photos import held_out, make_photo_folder
from PIL import Image

from pipeline.core.params import merge

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
    assert "skipped 3 file(s)" in proc.stdout, proc.stdout
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


def folder_case(root: Path, name: str) -> Path:
    """A small folder of generated pictures (2 classes × 6), then the change `name` makes to it."""
    images = root / "data/images"
    for i, cls in enumerate(("a", "b")):
        (images / cls).mkdir(parents=True, exist_ok=True)
        for j in range(6):
            Image.new("RGB", (40 + j, 30), (40 * i, 20 * j, 90)).save(images / cls / f"{j}.png")
    if name == "one-class":
        shutil.rmtree(images / "b")
    elif name == "pictures-at-top":
        Image.new("RGB", (8, 8)).save(images / "loose.png")
    elif name == "link-outside":
        (images / "a" / "elsewhere").symlink_to(root.parent)
    elif name == "class-emptied-by-skips":
        for path in (images / "b").iterdir():
            path.write_bytes(b"")
    elif name == "missing-folder":
        shutil.rmtree(images)
    elif name == "class-of-one":
        for path in sorted((images / "b").iterdir())[1:]:
            path.unlink()
    elif name == "class-copied":
        shutil.copytree(images / "b", images / "b again")
    elif name == "mac-zip-empty-class":  # a class of macOS's shadow files only, beside __MACOSX/
        shutil.copytree(images / "a", images / "__MACOSX" / "a")
        (images / "c").mkdir()
        (images / "c" / "._0.png").write_bytes(b"\0\5\26\7")
    return root


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing-folder", ("data.folder", "no such folder", "one subfolder per class")),
        ("one-class", ("data.folder", "1 class folder", "at least two classes")),
        ("pictures-at-top", ("loose.png", "picture outside a class folder")),
        ("link-outside", ("elsewhere", "symbolic link", "outside data.folder")),
        ("class-emptied-by-skips", ("class 'b'", "no usable picture", "empty file")),
        ("class-of-one", ("class 'b' has 1 picture", "at least 2 are needed")),
        ("class-copied", ("classes 'b' and 'b again' hold the same 6", "copied or linked")),
        ("mac-zip-empty-class", ("class 'c' has no usable picture", "c/._0.png: hidden file")),
    ],
)
def test_a_bad_folder_is_one_line_and_changes_nothing(
    tmp_path: Path, case: str, needles: tuple[str, ...]
) -> None:
    root = create_project(
        tmp_path / "project", {"data": {"dataset": "folder", "folder": "data/images"}}
    )
    run(
        ["python", "-m", "pipeline.stages.download"], folder_case(root, "good")
    )  # a first, good decoding
    before = snapshot(root)
    folder_case(root, case)
    after_edit = snapshot(root)
    proc = run(["python", "-m", "pipeline.stages.download"], root, check=False)
    assert_one_line_error(proc, *needles)
    assert_unchanged(after_edit, snapshot(root))
    assert {k: v for k, v in before.items() if k.startswith("data/raw")} == {
        k: v for k, v in snapshot(root).items() if k.startswith("data/raw")
    }


def test_the_same_picture_in_train_and_test_is_reported(tmp_path: Path) -> None:
    root = create_project(
        tmp_path / "project", {"data": {"dataset": "folder", "folder": "data/images"}}
    )
    for split in ("train", "test"):
        for k, cls in enumerate(("a", "b")):
            (root / "data/images" / split / cls).mkdir(parents=True)
            for j in range(3):
                Image.new("L", (20, 20), 10 * j + 40 * k + (0 if split == "train" else 100)).save(
                    root / "data/images" / split / cls / f"{j}.png"
                )
    shutil.copy(root / "data/images/train/a/0.png", root / "data/images/test/b/9.png")
    proc = run(["python", "-m", "pipeline.stages.download"], root)
    assert "warning: 1 picture(s) appear with the same pixels in two splits" in proc.stderr, (
        proc.stderr
    )
    report = json.loads((root / "data/raw/folder/report.json").read_text())
    assert report["duplicates"]["count"] == 1 and os.path.isdir(root / "data/raw/folder/train")


def git_lines(root: Path, *args: str) -> list[str]:
    """The lines `git *args` prints in `root`."""
    return run(["git", *args], root).stdout.splitlines()


def test_an_experiment_on_an_added_folder_commits_no_picture_and_stays_up_to_date(
    tmp_path: Path,
) -> None:
    """The documented set-up (`dvc add data/images`, the .dvc file committed): `dvc exp run`
    stages every untracked dependency that DVC does not track into the experiment's commit, so
    without `dvc add` each picture would land in git; with it none does, and nothing reruns
    after."""
    params = {"data": {"image_size": 32}, "train": {"model": "cnn", "epochs": 1}}
    root = create_project(tmp_path / "project", merge(FOLDER_PARAMS, params))
    images = make_photo_folder(root / "data/images", per_class=10)
    (images / "cat" / "2024" / "summer").mkdir(parents=True)  # pictures at any depth
    shutil.copy(next((images / "cat").glob("*.jpg")), images / "cat" / "2024" / "summer" / "x.jpg")
    (images / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    run(["dvc", "add", "data/images"], root)
    run(["git", "add", "data/images.dvc", "data/.gitignore"], root)
    run(["git", "commit", "-q", "-m", "pictures tracked by DVC"], root)
    assert not [
        f
        for f in git_lines(root, "status", "--porcelain", "--untracked-files=all")
        if "images/" in f
    ]

    run(["dvc", "exp", "run", "-S", f"train.lr={OTHER_LR}"], root)
    (ref,) = [
        r
        for r in git_lines(root, "for-each-ref", "--format=%(refname)", "refs/exps")
        if "/exec/" not in r
    ]
    files = git_lines(root, "ls-tree", "-r", "--name-only", ref)
    assert "data/images.dvc" in files and "dvc.lock" in files, files
    assert not [f for f in files if f.startswith("data/images/")], files
    changed = git_lines(root, "diff", "--name-only", "HEAD", ref)
    assert "params.yaml" in changed and not [f for f in changed if "images/" in f], changed
    assert "Running stage" not in run(["dvc", "repro"], root).stdout
    assert "up to date" in run(["dvc", "status"], root).stdout
