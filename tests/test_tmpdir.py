"""The stages leave the system's temporary folder as they found it: the train stage (its tracking
process logs the model through MLflow's temporary folders) and the weights stage starting from an
earlier run (MLflow downloads the model into temporary folders it never removes). A killed stage:
test_background.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import create_project, read_params, run, runs, write_params

from pipeline.core.params import merge

pytestmark = pytest.mark.e2e


def left_in(tmp: Path) -> list[str]:
    """What is in `tmp`, but torch's compile cache (`torchinductor_<user>`: one folder per user,
    made by torch.optim's import and reused by every process, by design)."""
    return sorted(p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_"))


def test_train_and_weights_from_a_run_leave_tmpdir_as_they_found_it(tmp_path: Path) -> None:
    root = create_project(tmp_path / "project")
    for stage in ("download", "normalization-stats", "weights"):
        run(["python", "-m", "pipeline", stage], root)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    run(["python", "-m", "pipeline", "train"], root, TMPDIR=str(tmp))
    assert left_in(tmp) == []

    (first,) = runs(root)
    name = re.sub(r"[/:.%\"']", "_", first.info.run_name)  # the logged model's (tracking.model)
    params = root / "params.yaml"
    uri = f"runs:/{first.info.run_id}/{name}"
    write_params(params, merge(read_params(params), {"train": {"weights": uri}}))
    out = run(["python", "-m", "pipeline", "weights"], root, TMPDIR=str(tmp)).stdout
    assert f"from MLflow run {first.info.run_id}" in out
    assert left_in(tmp) == []
