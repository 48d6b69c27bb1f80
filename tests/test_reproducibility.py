"""`pipeline_tools.repro_check` passes on identical reruns and fails, with a diff, when training is
not seeded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import read_params, run

from pipeline.core.params import merge

pytestmark = pytest.mark.e2e

SMALL = {
    "data": {"limit": 1000, "val_size": 500},
    "train": {"epochs": 1, "precision": "fp32", "threads": 2, "portable": True},
}


def checkable_project(make_project, name: str) -> Path:
    root = make_project(name=name)
    (root / "repro" / "params-ci.yaml").write_text(yaml.safe_dump(SMALL))
    run(["git", "commit", "-qam", "smaller CI configuration"], root)
    return root


def test_two_clean_runs_are_identical(make_project) -> None:
    root = checkable_project(make_project, "seeded")
    params = root / "params.yaml"
    params.write_text(params.read_text() + "\n# dirty\n")
    dirty = run(["python", "-m", "pipeline", "repro-check"], root, check=False)
    assert dirty.returncode == 2 and dirty.stderr.startswith(
        "error: the work tree has uncommitted changes"
    )
    run(["git", "checkout", "params.yaml"], root)

    first = run(["python", "-m", "pipeline", "repro-check", "--update-reference"], root)
    assert "reproducible: both runs" in first.stdout and "models/model.pt" in first.stdout
    assert "same" in first.stdout and "DIFFERENT" not in first.stdout
    reference = json.loads((root / "repro/reference.json").read_text())
    assert reference["eval.accuracy"] > 0.5 and "train.best_val_accuracy" in reference
    from pipeline.core import cpu

    hashes = json.loads((root / "repro/model-hashes.json").read_text())
    assert list(hashes) == [cpu.flags()] and len(hashes[cpu.flags()]) == 64
    assert f"CPU flags: {cpu.flags()}; configuration repro/params-ci.yaml: portable" in first.stdout


def test_unseeded_shuffling_is_caught_with_a_diff(make_project) -> None:
    root = checkable_project(make_project, "unseeded")
    loop = root / "pipeline" / "core" / "loop.py"
    seeded = "generator=torch.Generator().manual_seed(seed)"
    assert seeded in loop.read_text()
    # Injected nondeterminism: the shuffling generator seeded from the clock.
    loop.write_text(
        loop.read_text().replace(
            seeded, "generator=torch.Generator().manual_seed(__import__('time').time_ns())"
        )
    )
    run(["git", "commit", "-qam", "unseeded shuffle (test only)"], root)
    proc = run(["python", "-m", "pipeline", "repro-check"], root, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "NOT REPRODUCIBLE" in proc.stderr
    assert "models/model.pt: sha256" in proc.stderr and "DIFFERENT" in proc.stdout
    assert any(line.strip().startswith("eval.") for line in proc.stderr.splitlines())


def test_a_fine_tuned_run_with_policy_and_ema_reproduces(make_project, tmp_path: Path) -> None:
    """Issue 29: starting weights from a file under weights/, TrivialAugment and EMA together
    reproduce byte for byte, the fetched starting weights (models/start.pt) included."""
    import torch

    from pipeline.core import models
    from pipeline.core.params import Params

    root = make_project(name="finetuned")
    torch.manual_seed(0)
    net = models.builder("cnn")(1, 28, 10, models.options_from(Params().train))
    torch.save(net.state_dict(), root / "weights" / "start.pt")
    config = merge(
        SMALL,
        {
            "data": {"augment_policy": "trivialaugment"},
            "train": {"weights": "weights/start.pt", "ema_decay": 0.999},
        },
    )
    (root / "finetuned.yaml").write_text(yaml.safe_dump(config))
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "fine-tuning configuration"], root)
    clones = tmp_path / "clones"
    clones.mkdir()
    # --keep, with the clones under this test's folder: they show the configuration really ran.
    proc = run(
        ["python", "-m", "pipeline", "repro-check", "--config", "finetuned.yaml", "--keep"],
        root,
        TMPDIR=str(clones),
    )
    assert "configuration finetuned.yaml" in proc.stdout
    # Compared with itself only: the CI reference has nothing to say about this configuration.
    assert "OFF" not in proc.stdout and "no reference" not in proc.stdout
    assert "reproducible: both runs" in proc.stdout and "DIFFERENT" not in proc.stdout
    rows = {line.split()[0]: line.split()[-1] for line in proc.stdout.splitlines() if line}
    assert rows["models/model.pt"] == rows["models/start.pt"] == "same"
    (kept,) = clones.glob("repro-check-*")
    log = (kept / "run1.log").read_text()
    assert "starting from weights/start.pt" in log
    clone_params = read_params(kept / "run1" / "params.yaml")
    assert clone_params["data"]["augment_policy"] == "trivialaugment"
    assert clone_params["train"]["ema_decay"] == 0.999
