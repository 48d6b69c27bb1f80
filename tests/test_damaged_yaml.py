"""A damaged dvc.yaml, params.yaml, dvc.lock or CI configuration, as each command that reads it
meets it (in the work tree, or committed where the command reads the commit): one line naming the
file (and the line and column where the parser stopped), exit code 2, no traceback, every file of
the project untouched."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import assert_one_line_error, create_project, run, snapshot


@dataclass(frozen=True)
class Damage:
    name: str
    tail: bytes  # appended to the file
    needle: str  # in the error line


DAMAGES = [
    Damage("tab", b"\tbroken: [\n", "line "),
    Damage("unclosed-bracket", b"broken: [1, 2\n", "line "),
    Damage("not-utf8", b"broken: \xff\xfe\n", "UTF-8"),
]


@dataclass(frozen=True)
class Reader:
    name: str
    command: list[str]
    file: str
    committed: bool = False  # the command reads the committed file (or refuses a dirty tree)


READERS = [
    Reader("dvc-deps", ["dvc-deps"], "dvc.yaml"),
    Reader("dvc-deps-check", ["dvc-deps", "--check"], "dvc.yaml"),
    Reader("baseline", ["baseline"], "dvc.lock", committed=True),
    Reader("preset", ["preset", "presets/accurate.yaml", "--dry-run"], "params.yaml"),
    Reader("repro-check-params", ["repro-check"], "params.yaml", committed=True),
    Reader("repro-check-config", ["repro-check"], "repro/params-ci.yaml", committed=True),
    Reader("sweep", ["sweep", "--trials", "1"], "params.yaml", committed=True),
    Reader("stage", ["download"], "params.yaml"),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = create_project(tmp_path_factory.mktemp("damaged-yaml") / "project")
    # The lock of the committed defaults: what baseline reads at HEAD.
    (root / "dvc.lock").write_bytes((Path(__file__).parents[1] / "dvc.lock").read_bytes())
    run(["git", "add", "dvc.lock"], root)
    run(["git", "commit", "-qm", "lock"], root)
    return root


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda d: d.name)
@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.name)
def test_damaged_file_is_one_line(project: Path, reader: Reader, damage: Damage) -> None:
    path = project / reader.file
    original = path.read_bytes()
    path.write_bytes(original + damage.tail)
    if reader.committed:
        run(["git", "commit", "-qam", f"damaged {reader.file}"], project)
    try:
        before = snapshot(project)
        proc = run(["python", "-m", "pipeline", *reader.command], project, check=False)
        assert_one_line_error(proc, Path(reader.file).name, damage.needle)
        assert snapshot(project) == before
    finally:
        path.write_bytes(original)
        if reader.committed:
            run(["git", "commit", "-qam", f"{reader.file} repaired"], project)


@pytest.mark.parametrize(
    "text",
    [b"- download\n", b"stages: 3\n", b"stages:\n  train:\n    deps: [data]\n"],
    ids=["list", "stages-not-a-mapping", "stage-without-cmd"],
)
def test_dvc_yaml_of_another_shape_is_one_line(project: Path, text: bytes) -> None:
    path = project / "dvc.yaml"
    original = path.read_bytes()
    path.write_bytes(text)
    try:
        proc = run(["python", "-m", "pipeline", "dvc-deps"], project, check=False)
        assert_one_line_error(proc, "dvc.yaml: not a pipeline of stages")
        assert path.read_bytes() == text
    finally:
        path.write_bytes(original)
