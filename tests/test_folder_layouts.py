"""Folders as people have them (pipeline.core.folders, core.splits): single-picture and empty
classes, junk folders from zips and notebooks, the same picture under two labels, and a test split
that stays put when pictures are added, removed or relabelled.

Real files made by Pillow, real decoding, a real `dvc status` in a temporary project; no mocks."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, create_project, run
from PIL import Image

from pipeline.core import folders, splits
from pipeline.core.errors import PipelineError


def quiet(done: int, total: int, seconds: float) -> None:
    """A progress callback that shows nothing."""


def picture(path: Path, shade: int) -> Path:
    """A small grey PNG whose pixels are fixed by `shade` (two shades, two different pictures)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("L", (12, 10), shade % 256)
    img.putpixel((shade % 12, shade // 256 % 10), 255 - shade % 256)  # distinct beyond 256 shades
    img.save(path)
    return path


def make_folder(root: Path, counts: dict[str, int], offset: int = 0) -> Path:
    """root/<class>/<n>.png, counts[class] pictures each, all with different pixels."""
    shade = offset
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            picture(root / name / f"{name}-{i:03d}.png", shade)
            shade += 1
    return root


def refusal(root: Path, test_size: float = 0.2) -> str:
    """The one-line refusal of `root` by scan and carve: raised before any picture is decoded."""
    with pytest.raises(PipelineError) as exc:
        folders.carve(folders.scan(root), test_size)
    assert str(exc.value) and "\n" not in str(exc.value)
    return str(exc.value)


# (what the folder holds beyond classes a and b of 3 pictures each, the refusal's words)
REFUSED_BEFORE_DECODING = [
    ({"c/only.png": 1}, "class 'c' has 1 picture: at least 2 are needed, one to train on and one"),
    ({"c/deep/er/only.png": 1}, "class 'c' has 1 picture: at least 2 are needed"),
    ({"c/": 0}, "class 'c' has no usable picture (its folder holds no picture file)"),
    ({"c/.DS_Store": 0}, "class 'c' has no usable picture (1 skipped, first c/.DS_Store: not a"),
    (
        {"c/__MACOSX/._x.png": 0},
        "class 'c' has no usable picture (1 skipped, first c/__MACOSX: macOS zip metadata folder)",
    ),
    (
        {"c/.ipynb_checkpoints/x-checkpoint.png": 1},
        "class 'c' has no usable picture (1 skipped, first c/.ipynb_checkpoints: Jupyter",
    ),
]


@pytest.mark.parametrize(("extra", "message"), REFUSED_BEFORE_DECODING)
def test_a_class_too_small_to_train_and_test_is_refused_for_what_it_is(
    tmp_path: Path, extra: dict[str, int], message: str
) -> None:
    root = make_folder(tmp_path / "photos", {"a": 3, "b": 3})
    for rel, is_picture in extra.items():
        if rel.endswith("/"):
            (root / rel).mkdir(parents=True)
        elif is_picture:
            picture(root / rel, 200)
        else:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"\0\0\0\1Bud1")
    assert message in refusal(root)
    # The same class with a second picture is taken, one picture on each side.
    shutil.rmtree(root / "c")
    picture(root / "c" / "one.png", 201)
    picture(root / "c" / "two.png", 202)
    carved = folders.carve(folders.scan(root), 0.2)
    assert [sum(lb == 2 for _, lb in carved.splits[s]) for s in ("train", "test")] == [1, 1]


@pytest.mark.parametrize("split", ["train", "test", "val"])
def test_an_empty_class_in_a_split_folder_is_refused_before_decoding(
    tmp_path: Path, split: str
) -> None:
    for part in ("train", "test", "val"):
        make_folder(tmp_path / "photos" / part, {"a": 2, "b": 2}, offset=10 * len(part))
    for path in (tmp_path / "photos" / split / "b").iterdir():
        path.unlink()
    (tmp_path / "photos" / split / "b" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    assert refusal(tmp_path / "photos").endswith(
        f"class 'b' has no usable picture in the {split} split (1 skipped, first "
        f"{split}/b/Thumbs.db: not a picture file)"
    )


@pytest.mark.parametrize("junk", sorted(folders.JUNK_FOLDERS))
def test_junk_folders_are_skipped_by_name_at_the_top_and_in_a_class(
    tmp_path: Path, junk: str
) -> None:
    root = make_folder(tmp_path / "photos", {"a": 2, "b": 2})
    # As a Mac zip has it: a shadow tree of AppleDouble files, which look like pictures.
    picture(root / junk / "a" / "a-000.png", 99)
    picture(root / "a" / junk / "a-000-checkpoint.png", 98)
    layout = folders.scan(root)
    assert layout.classes == ("a", "b")
    skipped = {p.relative_to(root).as_posix(): why for p, why in layout.skipped}
    assert skipped == {junk: folders.JUNK_FOLDERS[junk], f"a/{junk}": folders.JUNK_FOLDERS[junk]}


def test_dvcignore_names_everything_skipped_by_name() -> None:
    patterns = set((REPO / ".dvcignore").read_text().splitlines())
    wanted = {*folders.JUNK_FILES, *(f"{name}/" for name in folders.JUNK_FOLDERS)}
    assert wanted <= patterns, wanted - patterns


# How the same picture comes to be under two labels: (name, what is done to folder a/b/c).
TWINS = ["copied", "linked", "other-bytes", "test-split"]


@pytest.mark.parametrize("how", TWINS)
def test_the_same_picture_under_two_labels_is_reported_in_any_split(
    tmp_path: Path, how: str
) -> None:
    root = make_folder(tmp_path / "photos", {"a": 6, "b": 6, "c": 6})
    source, twin = root / "a" / "a-002.png", root / "c" / "twin.png"
    if how == "copied":
        shutil.copy(source, twin)
    elif how == "linked":
        twin.symlink_to(source)
    elif how == "other-bytes":  # the same pixels, saved otherwise
        Image.open(source).save(twin, compress_level=0)
    layout = folders.scan(root)
    if how == "test-split":  # one picture in train, its twin in test: a duplicate and a conflict
        layout = folders.carve(layout, 0.3)
        source = next(p for p, lb in layout.splits["train"] if lb == 0)
        twin = next(p for p, lb in layout.splits["test"] if lb == 2)
        shutil.copy(source, twin)
    report = folders.decode(layout, 1, 8, tmp_path / "out", 1, quiet)
    pair = [source.relative_to(root).as_posix(), twin.relative_to(root).as_posix()]
    assert report["conflicts"] == {"count": 1, "pairs": [pair]}
    assert report["duplicates"]["count"] == (how == "test-split")
    # The same picture twice under one label is no conflict.
    shutil.copy(source, source.with_name("again.png"))
    again = folders.decode(folders.scan(root), 1, 8, tmp_path / "out", 1, quiet)
    assert again["conflicts"]["count"] == 2


@pytest.mark.parametrize("how", ["copied", "linked", "split-folders"])
def test_a_class_that_repeats_another_is_refused(tmp_path: Path, how: str) -> None:
    root = tmp_path / "photos"
    if how == "split-folders":  # train/ and test/ each with 'b copy' beside b
        for split in ("train", "test"):
            make_folder(root / split, {"a": 2, "b": 2}, offset=50 * (split == "test"))
            shutil.copytree(root / split / "b", root / split / "b copy")
    else:
        make_folder(root, {"a": 4, "b": 4})
        if how == "copied":
            shutil.copytree(root / "b", root / "b copy")
        else:
            (root / "b copy").symlink_to(root / "b", target_is_directory=True)
    with pytest.raises(PipelineError) as exc:
        folders.decode(folders.scan(root), 1, 8, tmp_path / "out", 1, quiet)
    assert str(exc.value) == (
        f"data.folder {root}: classes 'b' and 'b copy' hold the same 4 picture(s) (the same "
        "pixels): a copied or linked class folder? Remove one"
    )
    assert not (tmp_path / "out").exists()
    if how != "linked":  # b's pictures as part of a class that holds more: taken, and reported
        picture(root / ("train" if how == "split-folders" else "") / "b copy" / "more.png", 250)
        report = folders.decode(folders.scan(root), 1, 8, tmp_path / "out", 1, quiet)
        assert report["conflicts"]["count"] == 4


def sides(root: Path, seed: int = 42) -> dict[str, str]:
    """Each picture of the folder `root` by its path inside its class folder: "test", "val" or
    "fit", as the download stage (carve) and then train (split_indices) put it."""
    carved = folders.carve(folders.scan(root), 0.2)
    keys = {
        split: [folders.class_path(p.relative_to(root).as_posix(), "all") for p, _ in items]
        for split, items in carved.splits.items()
    }
    labels = [label for _, label in carved.splits["train"]]
    fit, val = splits.split_indices(labels, 5000, seed, keys=keys["train"])
    return (
        dict.fromkeys(keys["test"], "test")
        | {keys["train"][i]: "fit" for i in fit}
        | {keys["train"][i]: "val" for i in val}
    )


def test_adding_removing_or_relabelling_pictures_moves_no_other_picture(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", {"a": 90, "b": 90, "c": 90})
    before = sides(root)
    assert len(before) == 270
    picture(root / "a" / "new-1.png", 1000)
    picture(root / "c" / "new-2.png", 1001)
    (root / "b" / "b-010.png").unlink()
    (root / "b" / "b-020.png").rename(root / "c" / "b-020.png")  # relabelled: moved to class c
    after = sides(root)
    assert set(after) == set(before) - {"b-010.png"} | {"new-1.png", "new-2.png"}
    moved = {k: (before[k], after[k]) for k in set(before) & set(after) if before[k] != after[k]}
    assert moved == {}
    # Not a property of any assignment: the seed decides which pictures validate.
    assert sides(root, seed=43) != after
    # About a fifth of each class is tested on, as the report says.
    report = folders.decode(folders.carve(folders.scan(root), 0.2), 1, 8, tmp_path / "o", 2, quiet)
    fractions = report["test_fraction"]
    assert set(fractions) == {"a", "b", "c"} and all(0.1 < f < 0.3 for f in fractions.values())
    per_class = {s: report["splits"][s]["per_class"] for s in ("train", "test")}
    assert fractions["b"] == round(per_class["test"]["b"] / 88, 4)
    # The keys the validation carve reads back from the decoded files are the carve's own.
    assert sorted(folders.class_paths(tmp_path / "o", "train")) == sorted(
        k for k, side in after.items() if side != "test"
    )


@pytest.mark.parametrize(
    ("rel", "split", "inside"),
    [
        ("cat/x.png", "all", "x.png"),
        ("cat/sub/x.png", "train", "sub/x.png"),
        ("train/cat/sub/x.png", "train", "sub/x.png"),
        ("val/x.png", "all", "x.png"),  # a class named val in a folder without split folders
        ("val/val/x.png", "val", "x.png"),
        ("test/cat/x.png", "test", "x.png"),
    ],
)
def test_the_path_inside_the_class_folder(rel: str, split: str, inside: str) -> None:
    assert folders.class_path(rel, split) == inside


@pytest.mark.parametrize("size", range(2, 12))
def test_every_class_of_two_pictures_or_more_has_both_sides(size: int) -> None:
    for trial in range(40):  # many sets of names: some hash all in, some all out
        keys = [f"{trial}-{i}.jpg" for i in range(size)]
        for fraction in (0.05, 0.2, 0.95):
            out = splits.hashed(keys, [0] * size, fraction, 0, "test")
            assert 0 < out.sum() < size, (keys, fraction)
    # A class of one item is kept, never held out (a fitting picture for every class).
    many = [f"{i}.jpg" for i in range(200)]
    assert not splits.hashed(many, range(200), 0.95, 0, "val").any()


def test_a_built_in_dataset_is_split_as_before() -> None:
    """The validation carve of MNIST-sized labels is the same indices as before folders were
    hashed: the same model bytes on defaults."""
    labels = np.random.default_rng(7).integers(0, 10, 60000)
    for limit, digest in [
        (None, "793168c09497fdb6ff13732aceb7e7a4cc28b52b50eff3707dbd149bf4696668"),
        (2000, "3202b3faa133ffc5ca38a240e71638eaae1a8b0cc80df366a0083caa2257b289"),
    ]:
        fit, val = splits.split_indices(labels, 5000, 42, limit)
        assert hashlib.sha256(fit.tobytes() + val.tobytes()).hexdigest() == digest


def test_junk_appearing_in_the_folder_reruns_nothing(tmp_path: Path) -> None:
    root = create_project(
        tmp_path / "project", {"data": {"dataset": "folder", "folder": "data/images"}}
    )
    images = make_folder(root / "data" / "images", {"a": 3, "b": 3})
    shutil.copy(images / "a" / "a-000.png", images / "b" / "mislabelled.png")
    proc = run(["dvc", "repro", "download"], root)
    assert (
        "warning: 1 pair(s) of pictures have the same pixels under two classes (e.g. "
        "a/a-000.png and b/mislabelled.png)" in proc.stdout + proc.stderr
    ), proc.stdout + proc.stderr
    assert re.search(r"tested on \d+% to \d+% of each class's pictures", proc.stdout), proc.stdout
    up_to_date = "Data and pipelines are up to date."
    assert up_to_date in run(["dvc", "status", "download"], root).stdout
    for rel in [
        ".DS_Store",
        "a/.DS_Store",
        "b/._mislabelled.png",
        "a/Thumbs.db",
        "desktop.ini",
        "__MACOSX/a/._a-000.png",
        "a/.ipynb_checkpoints/a-000-checkpoint.png",
    ]:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).write_bytes(b"\0\0\0\1Bud1")
        assert up_to_date in run(["dvc", "status", "download"], root).stdout, rel
    picture(images / "a" / "new.png", 77)  # a picture does rerun the stage
    assert "changed deps" in run(["dvc", "status", "download"], root).stdout
