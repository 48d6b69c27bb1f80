"""Folders as people have them (pipeline.core.folders, core.splits): single-picture and empty
classes, junk folders from zips and notebooks, the same picture under two labels, and a test split
that stays put when pictures are added, removed or relabelled.

Real files made by Pillow, real decoding, a real `dvc status` in a temporary project; no mocks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import REPO
from PIL import Image

from pipeline.core import folders
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
        f"data.folder {root}: all 4 picture(s) of class 'b' are also in class 'b copy' (the same "
        "pixels): a copied or linked class folder? Remove or relabel it"
    )
    assert not (tmp_path / "out").exists()
