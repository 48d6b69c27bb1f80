"""The download stage's line about skipped files: pictures that could not be read first (counted,
the first named), then other files that are no pictures, junk (.DS_Store, hidden files, __MACOSX/)
only counted, and no line at all when everything skipped is junk. report.json lists every skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import create_project, run
from photos import photo, save

JUNK = {
    ".DS_Store": b"\0\0\0\1Bud1",
    "a/.DS_Store": b"\0\0\0\1Bud1",
    "b/Thumbs.db": b"\xd0\xcf\x11\xe0",
    "a/._0.png": b"\0\5\26\7",
    "__MACOSX/a/._1.png": b"\0\5\26\7",
}
CASES = {
    # files added to a good folder → the line the stage prints (None: no line)
    "a truncated JPEG beside .DS_Store": (
        {".DS_Store": JUNK[".DS_Store"], "b/cut.jpg": "cut"},
        "skipped 1 picture(s) that could not be read (first: b/cut.jpg, truncated or damaged",
    ),
    "unreadable pictures before other files and junk": (
        {**JUNK, "a/notes.txt": b"hi\n", "a/empty.jpg": b"", "b/x.png": b"no picture\n"},
        "skipped 2 picture(s) that could not be read (first: a/empty.jpg, empty file (0 bytes)), "
        "1 other file(s) (first: a/notes.txt, not a picture file), 5 junk or hidden file(s) such "
        "as .DS_Store; each with its reason in data/raw/folder/report.json",
    ),
    "only other files and junk": (
        {"b/notes.txt": b"hi\n", "a/.DS_Store": JUNK["a/.DS_Store"]},
        "skipped 1 other file(s) (first: b/notes.txt, not a picture file), 1 junk or hidden "
        "file(s) such as .DS_Store; each",
    ),
    "only junk": (JUNK, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_skips_that_matter_are_said_first(tmp_path: Path, case: str) -> None:
    files, line = CASES[case]
    root = create_project(
        tmp_path / "project", {"data": {"dataset": "folder", "folder": "data/images"}}
    )
    images = root / "data/images"
    for name, cls in (("cat", "a"), ("coffee", "b")):
        for i in range(4):
            save(photo(name).crop((i * 10, 0, 120 + i * 10, 90)), images / cls / f"{i}.png")
    for rel, data in files.items():
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        if data == "cut":
            data = save(photo("cat"), images / rel).read_bytes()
            data = data[: len(data) // 2]
        (images / rel).write_bytes(data)
    proc = run(["python", "-m", "pipeline.stages.download"], root)
    said = [ln for ln in proc.stdout.splitlines() if ln.startswith("skipped")]
    if line is None:
        assert said == [], proc.stdout
    else:
        assert len(said) == 1 and said[0].startswith(line), proc.stdout
    report = json.loads((root / "data/raw/folder/report.json").read_text())
    assert sorted(s["path"] for s in report["skipped"]) == sorted(
        "__MACOSX" if rel.startswith("__MACOSX") else rel for rel in files
    )
