"""A folder of pictures as a dataset (pipeline.core.folders): scanning it into classes and splits,
what is skipped and why, what is refused in one line, decoding it in worker processes into arrays
the train stage reads back, and the same mistakes through the download stage.

Real files made by Pillow or cut from scikit-image's photographs, no mocks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers import assert_one_line_error, assert_unchanged, create_project, run, snapshot
from photos import held_out, make_photo_folder, photo, save
from PIL import Image
from torchvision.datasets.folder import find_classes, make_dataset

from pipeline.core import folders, images
from pipeline.core.errors import PipelineError


def png_header(width: int, height: int) -> bytes:
    """A PNG saying width×height with garbage pixels: only a refusal from its header is not
    "truncated or damaged"."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", b"garbage") + chunk(b"IEND", b"")


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert str(exc.value) and "\n" not in str(exc.value)
    return str(exc.value)


def quiet(done: int, total: int, seconds: float) -> None:
    """A progress callback that shows nothing."""


def test_each_skip_is_listed_with_its_reason(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for name in ("cat", "coffee"):
        for i in range(2):
            save(photo(name).crop((i * 10, 0, 200 + i * 10, 150)), root / name / f"good{i}.png")
    (root / "cat" / ".cache").mkdir()
    for rel, data in [
        (".DS_Store", b"\0\0\0\1Bud1"),
        ("cat/Thumbs.db", b"\xd0\xcf\x11\xe0"),
        ("cat/notes.txt", b"hi\n"),
        ("cat/x.png", b"not a picture\n"),
        ("cat/empty.jpg", b""),
        ("cat/._good0.png", b"\0\5\26\7"),
        ("coffee/huge.png", png_header(9000, 8000)),
    ]:
        (root / rel).write_bytes(data)
    for suffix in ("png", "jpg"):
        data = save(photo("cat"), root / "coffee" / f"cut.{suffix}").read_bytes()
        (root / "coffee" / f"cut.{suffix}").write_bytes(data[: len(data) // 2])
    layout = folders.scan(root)
    assert [(p.relative_to(root).as_posix(), why) for p, why in layout.skipped] == [
        (".DS_Store", "not a picture file"),
        ("cat/._good0.png", "hidden file"),
        ("cat/.cache", "hidden folder"),
        ("cat/Thumbs.db", "not a picture file"),
        ("cat/notes.txt", "not a picture file"),
    ]
    report = folders.decode(layout, 3, 32, tmp_path / "out", 2, quiet)
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert len(reasons) == 10 and reasons["cat/x.png"] == "not a picture Pillow can read"
    assert reasons["cat/empty.jpg"] == "empty file (0 bytes)"
    assert (
        reasons["coffee/huge.png"] == "9000×8000 pixels is too large: over 64 megapixels"
    )  # never decoded: see png_header
    assert reasons["coffee/cut.png"].startswith("truncated or damaged (")
    assert reasons["coffee/cut.jpg"].startswith("truncated or damaged (image file is truncated")
    assert report["splits"]["all"]["per_class"] == {"cat": 2, "coffee": 2}
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    (tmp_path / "big.png").write_bytes(png_header(20000, 20000))  # past Pillow's own limit
    with pytest.raises(images.ImageError, match="decompression bomb"):
        images.open_image(tmp_path / "big.png")
    (tmp_path / "big.png").write_bytes(
        png_header(8000, 8000)
    )  # just under ours: opened, as nothing is decoded yet
    assert images.open_image(tmp_path / "big.png").size == (8000, 8000)


@pytest.mark.parametrize(
    "files,message",
    [
        ([], "missing: no such folder; expected one subfolder per class"),
        (["cat/a.png"], "1 class folder(s); expected one subfolder per class, or train/ and test/"),
        (["a.png", "cat/b.png", "dog/c.png"], "a.png: picture outside a class folder; expected"),
        (
            ["train/a.png", "train/cat/a.png", "train/dog/a.png", "test/cat/a.png"],
            "train/a.png: picture outside a class",
        ),
        (
            [
                "train/cat/a.png",
                "train/dog/a.png",
                "test/cat/a.png",
                "test/dog/a.png",
                "test/emu/a.png",
            ],
            "class 'emu' is in test/ but not in train/; expected",
        ),
        (
            ["train/cat/a.png", "train/dog/a.png", "test/cat/a.png", "test/emu.txt"],
            "class 'dog' is in train/ but not in test/",
        ),
        (["train/cat/a.png", "train/dog/a.png"], "holds train/; expected"),
        (
            ["train/cat/a.png", "test/cat/a.png", "extra/cat/a.png"],
            "holds extra/, test/, train/; expected",
        ),
        # "link@target": a symbolic link to tmp_path/target
        (
            ["cat/a.png", "dog/a.png", "cat/b.png@elsewhere/b.png"],
            "cat/b.png: symbolic link to {tmp}/elsewhere/b.png, outside",
        ),
        (
            ["cat/a.png", "dog/a.png", "dog/trip@elsewhere"],
            "dog/trip: symbolic link to {tmp}/elsewhere, outside data.folder",
        ),
        (
            ["cat/a.png", "dog/a.png", "cat/loop@missing/cat"],
            "cat/loop: symbolic link loop (it leads back to {tmp}/missing/cat)",
        ),
    ],
)
def test_folders_that_are_refused_in_one_line(
    tmp_path: Path, files: list[str], message: str
) -> None:
    save(Image.new("RGB", (8, 8)), tmp_path / "elsewhere" / "b.png")
    for rel in files:
        link, _, target = rel.partition("@")
        if target:
            (tmp_path / "missing" / link).symlink_to(tmp_path / target)
        else:
            save(Image.new("RGB", (8, 8)), tmp_path / "missing" / rel, "PNG")
    with pytest.raises(PipelineError) as exc:
        folders.scan(tmp_path / "missing")
    assert message.format(tmp=tmp_path) in one_line(exc)


def test_the_photo_folder_holds_every_mode_seeded_and_apart_from_held_out(tmp_path: Path) -> None:
    root = make_photo_folder(tmp_path / "photos", per_class=10)
    assert {(p.suffix, Image.open(p).mode) for p in root.rglob("*.*")} == {
        (".jpg", "RGB"),
        (".png", "L"),
        (".png", "RGBA"),
        (".gif", "P"),
        (".tiff", "RGB"),
    }
    again = make_photo_folder(tmp_path / "again", per_class=10)
    assert all(
        (again / p.relative_to(root)).read_bytes() == p.read_bytes() for p in root.rglob("*.*")
    )  # seeded
    extra = {images.read(p, 3, 24).tobytes(): name for p, name in held_out(tmp_path / "extra")}
    assert len(extra) == 9 and not set(extra) & {
        images.read(p, 3, 24).tobytes() for p in root.rglob("*.*")
    }


def test_decode_writes_what_read_split_reads_back(tmp_path: Path) -> None:
    root = make_photo_folder(tmp_path / "photos", per_class=10)
    save(photo("cat").crop((0, 0, 90, 70)), root / "cat" / "deeper" / "still" / "x.webp")
    for i, name in enumerate(
        ("日本", "café crème", "Zebra", "café crème", "日本")
    ):  # Unicode and spaces are kept
        save(photo("coffee").crop((i, 0, 60 + i, 40)), root / name / f"é {i}.png")
    (root / "coffee" / "alias.jpg").symlink_to(
        root / "cat" / "000.jpg"
    )  # links inside the folder are followed
    (root / "Zebra" / "more").symlink_to(root / "日本", target_is_directory=True)
    calls: list[tuple[int, int, float]] = []
    layout = folders.scan(root)
    report = folders.decode(layout, 3, 24, tmp_path / "out", 2, lambda *a: calls.append(a))
    samples = make_dataset(str(root), find_classes(root)[1], extensions=images.SUFFIXES)
    assert [(str(p), label) for p, label in layout.splits["all"]] == sorted(
        samples, key=lambda s: Path(s[0])
    )
    assert (
        report["classes"]
        == find_classes(root)[0]
        == ["Zebra", "astronaut", "café crème", "cat", "coffee", "日本"]
    )
    assert report["splits"]["all"] == {
        "count": 39,
        "per_class": {
            "Zebra": 3,
            "astronaut": 10,
            "café crème": 2,
            "cat": 11,
            "coffee": 11,
            "日本": 2,
        },
    }
    assert [c[:2] for c in calls] == [(i, 39) for i in range(1, 40)]
    x, y = folders.read_split(tmp_path / "out", "all")
    assert (
        x.shape == (39, 3, 24, 24)
        and x.dtype == np.uint8
        and not x.flags.writeable
        and y.dtype == np.int64
    )
    files = json.loads((tmp_path / "out" / "all" / "files.json").read_text())
    for row, (rel, label) in enumerate(zip(files, y, strict=False)):
        assert (
            np.array_equal(x[row], images.read(root / rel, 3, 24))
            and report["classes"][label] == rel.split("/")[0]
        )
    folders.drop_pages(x)  # the pages go; the values come back from the file
    assert np.array_equal(x[0], images.read(root / files[0], 3, 24))
    assert report["digest"] == folders.decode(layout, 3, 24, tmp_path / "again", 1, quiet)["digest"]
    (root / "cat" / "000.jpg").rename(root / "cat" / "000-renamed.jpg")
    assert (
        folders.decode(folders.scan(root), 3, 24, tmp_path / "moved", 2, quiet)["digest"]
        != report["digest"]
    )
    assert json.loads((tmp_path / "out" / "all" / "files.json").read_text())[-1] == "日本/é 4.png"


def test_duplicates_across_splits_are_counted_and_a_class_left_empty_stops(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for n, (split, name, i) in enumerate(
        (s, c, i) for s in ("train", "test", "val") for c in ("cat", "coffee") for i in (0, 1)
    ):
        save(photo(name).crop((n * 3, 0, 120 + n * 3, 90)), root / split / name / f"{i}.png")
    same = photo("astronaut").crop((0, 0, 100, 100))
    save(same, root / "train" / "cat" / "shared.png")
    save(same, root / "test" / "cat" / "copy.png", compress_level=9)  # other bytes, the same pixels
    save(same, root / "val" / "coffee" / "mislabelled.tiff")
    report = folders.decode(folders.scan(root), 3, 32, tmp_path / "out", 2, quiet)
    assert list(report["splits"]) == ["train", "val", "test"]
    assert report["duplicates"] == {
        "count": 3,
        "pairs": [
            ["train/cat/shared.png", "val/coffee/mislabelled.tiff"],
            ["train/cat/shared.png", "test/cat/copy.png"],
            ["val/coffee/mislabelled.tiff", "test/cat/copy.png"],
        ],
    }
    assert [len(folders.read_split(tmp_path / "out", s)[0]) for s in ("train", "val", "test")] == [
        5,
        5,
        5,
    ]
    os.truncate(tmp_path / "out" / "val" / "images.u8", 5 * 3 * 32 * 32 - 1)  # one byte short
    for split in ("val", "nothing"):
        with pytest.raises(PipelineError) as exc:
            folders.read_split(tmp_path / "out", split)
        assert "decoded pictures missing or damaged" in one_line(
            exc
        ) and "rerun the download stage (dvc repro -f download)" in one_line(exc)
    with pytest.raises(
        PipelineError, match=r"data.channels must be 1 or 3 and data.image_size at least 1"
    ):
        folders.decode(folders.scan(root), 2, 32, tmp_path / "out", 2, quiet)
    for picture in (root / "test" / "coffee").iterdir():
        picture.write_bytes(png_header(64, 64))  # every coffee picture of test/ damaged
    with pytest.raises(PipelineError) as exc:
        folders.decode(folders.scan(root), 1, 16, tmp_path / "out", 2, quiet)
    assert one_line(exc).startswith(
        f"data.folder {root}: class 'coffee' has no usable picture in the test split "
        "(2 skipped, first test/coffee/0.png: truncated or damaged ("
    )
    assert (tmp_path / "out" / "val" / "images.u8").exists()  # the previous output stays whole
    for picture in (root / "test" / "coffee").iterdir():
        picture.unlink()
    with pytest.raises(PipelineError) as exc:
        folders.decode(folders.scan(root), 1, 16, tmp_path / "out", 1, quiet)
    assert one_line(exc).endswith(
        "class 'coffee' has no usable picture in the test split (its folder holds no picture file)"
    )


def test_rows_keep_their_order_and_a_killed_worker_stops_decoding(tmp_path: Path) -> None:
    for i in range(500):  # several windows of chunks in flight: row i must still be picture i
        save(
            Image.new("L", (28, 28), i % 251),
            tmp_path / "d" / ("even", "odd")[i % 2] / f"{i:04d}.png",
        )
    assert (
        folders.decode(folders.scan(tmp_path / "d"), 1, 28, tmp_path / "out", 2, quiet)["splits"][
            "all"
        ]["count"]
        == 500
    )
    x, y = folders.read_split(tmp_path / "out", "all")
    files = json.loads((tmp_path / "out" / "all" / "files.json").read_text())
    assert y.tolist() == [0] * 250 + [1] * 250
    assert [int(x[row, 0, 0, 0]) for row in range(500)] == [int(Path(f).stem) % 251 for f in files]
    killed: list[int] = []

    def kill_a_worker(done: int, total: int, seconds: float) -> None:
        # The workers are the forkserver's children (it is ours): kill one as the OOM killer would.
        # Any of these processes may exit between listing and signalling it (a finished helper):
        # skip it, try the next.
        for child in psutil.Process().children():
            try:
                workers = child.children()
            except psutil.NoSuchProcess:
                continue
            for worker in workers:
                if killed:
                    return
                try:
                    os.kill(worker.pid, signal.SIGKILL)
                    killed.append(worker.pid)
                except ProcessLookupError:
                    continue

    with pytest.raises(PipelineError, match="a process decoding the pictures died"):
        folders.decode(folders.scan(tmp_path / "d"), 1, 28, tmp_path / "out2", 2, kill_a_worker)
    assert killed and not (tmp_path / "out2").exists()  # instead of waiting forever
    # Large rows too (about 2 MB per chunk): a worker killed while its results travel must not hang
    # the stage either (ProcessPoolExecutor waits forever on half a message in its pipe, so results
    # go through files).
    for i in range(96):
        save(
            Image.new("RGB", (160, 160), (i, 2 * i, 3 * i)),
            tmp_path / "big" / ("a", "b")[i % 2] / f"{i:03d}.png",
        )
    killed.clear()
    with pytest.raises(PipelineError, match="a process decoding the pictures died"):
        folders.decode(folders.scan(tmp_path / "big"), 3, 160, tmp_path / "out3", 2, kill_a_worker)
    assert killed and not (tmp_path / "out3").exists()


# ----------------------------------------------------------------------------------------------
# through the download stage, in a project


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
