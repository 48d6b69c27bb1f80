"""`python -m pipeline preset`: a params file run as `dvc exp run -S …`, checked first like
params.yaml."""

from __future__ import annotations

import json

import pytest
from helpers import REPO, assert_one_line_error, run, runs


def test_the_committed_presets_are_valid_against_params_yaml() -> None:
    for preset in sorted((REPO / "presets").glob("*.yaml")):
        out = run(["python", "-m", "pipeline", "preset", str(preset), "--dry-run"], REPO).stdout
        assert out.startswith(f"dvc exp run -n {preset.stem} -S "), out


@pytest.mark.parametrize(
    "text, needle",
    [
        ("train:\n  epochs: 4\n  bogus: 1\n", "train.bogus is not a parameter"),
        ("train:\n  epochs: -4\n", "train.epochs must be an integer >= 1 or auto, got -4"),
        ("- just a list\n", "a preset is a mapping"),
    ],
)
def test_a_bad_preset_is_one_line_naming_file_and_key(make_project, text: str, needle: str) -> None:
    root = make_project()
    (root / "bad.yaml").write_text(text)
    proc = run(["python", "-m", "pipeline", "preset", "bad.yaml"], root, check=False)
    assert_one_line_error(proc, "bad.yaml", needle)
    assert "Running stage" not in proc.stdout + proc.stderr


@pytest.mark.e2e
def test_a_preset_runs_as_a_named_experiment(make_project) -> None:
    root = make_project()
    (root / "small.yaml").write_text("train:\n  dropout: 0.2\n  cnn_channels: [8, 16]\n")
    out = run(["python", "-m", "pipeline", "preset", "small.yaml"], root).stdout
    assert "dvc exp run -n small -S train.dropout=0.2 -S 'train.cnn_channels=[8,16]'" in out
    (only,) = runs(root)
    assert only.data.tags["dvc.exp_name"] == "small" and only.info.status == "FINISHED"
    assert (
        only.data.params["train.dropout"] == "0.2"
        and only.data.params["train.cnn_channels"] == "[8, 16]"
    )
    shown = json.dumps(json.loads(run(["dvc", "exp", "show", "--json"], root).stdout))
    assert "small" in shown
