"""Bad input to the stage commands, and a world they cannot reach (no network, a tracking server
that is down): one line naming the problem, exit code 2, no traceback, no output. (Bad parameter
values: test_param_errors.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import assert_one_line_error, free_port, run, written


def stage(name: str, cwd: Path, *args: str):
    """A stage command exactly as dvc.yaml runs it (the installed package, no path tricks)."""
    return run(["python", "-m", f"pipeline.stages.{name}", *args], cwd, check=False)


@pytest.mark.parametrize(
    "name", ["download", "normalization_stats", "weights", "train", "evaluate"]
)
def test_missing_and_unparsable_params_file(tmp_path: Path, name: str) -> None:
    assert_one_line_error(stage(name, tmp_path), "params.yaml: file not found")
    (tmp_path / "params.yaml").write_text("train: {lr: 0.1\n")
    assert_one_line_error(stage(name, tmp_path), "params.yaml: not valid YAML at line")
    assert written(tmp_path) == []


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("normalization_stats", "data/raw: no MNIST data there; run the download stage first"),
        ("train", "data/stats.json: not found; run the normalization-stats stage first"),
        ("evaluate", "models/model.pt: not found; run the train stage first"),
    ],
)
def test_stage_before_its_inputs_exist(tmp_path: Path, name: str, needle: str) -> None:
    (tmp_path / "params.yaml").write_text("{}\n")
    assert_one_line_error(stage(name, tmp_path), needle)
    assert written(tmp_path) == []


def test_mirror_with_a_corrupt_file_copies_nothing(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]:
        (mirror / name).write_bytes(b"not mnist")
    project = tmp_path / "project"
    project.mkdir()
    (project / ".dvc").mkdir()  # marks the project root the mirror path is relative to
    (project / "params.yaml").write_text(yaml.safe_dump({"data": {"mirror": str(mirror)}}))
    proc = stage("download", project)
    assert_one_line_error(
        proc,
        "train-images-idx3-ubyte.gz: MD5",
        "does not match torchvision's f68b3c2dcbeaaa9fbdd348bbdeb94873",
    )
    assert not (project / "data" / "raw").exists()
    assert list((project / "data").iterdir()) == [] if (project / "data").exists() else True


def test_exp_run_on_a_dataset_with_no_files_and_no_network_fails_in_one_line(make_project) -> None:
    root = make_project()
    # A dead proxy makes any download fail at once, wherever the suite runs.
    proc = run(
        ["dvc", "exp", "run", "-S", "data.dataset=kmnist"],
        root,
        check=False,
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    for name in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "data.mirror",
    ]:
        assert name in errors[0]
    assert not (root / "data" / "raw").exists()


def test_unreachable_tracking_server_fails_fast_in_one_line(make_project) -> None:
    root = make_project()
    dead = f"http://127.0.0.1:{free_port()}"
    proc = run(["dvc", "repro"], root, check=False, MLFLOW_TRACKING_URI=dead)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: MLFLOW_TRACKING_URI={dead}: tracking server unreachable "
        "([Errno 111] Connection refused); start it or unset the variable"
    ], output
    assert "Traceback" not in output and "epoch 1" not in output
    assert not (root / "models" / "model.pt").exists()
