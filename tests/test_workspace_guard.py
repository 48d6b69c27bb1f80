"""A stage whose inputs change while it runs (params.yaml rewritten by `dvc exp run -S`, a dep
edited) stops in one line naming the input, with its outputs as they were; DVC then records nothing
for it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import create_project, run

from pipeline.core import atomic
from pipeline.core.errors import PipelineError
from pipeline.core.repo import clean_env
from pipeline.core.workspace import InputGuard


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = create_project(tmp_path / "project")
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / "images.bin").write_bytes(b"\0" * 64)
    (root / "data" / "stats.json").write_text('{"mean": [0.1], "std": [0.3]}\n')
    monkeypatch.chdir(root)
    return root


def _set(root: Path, key: str, value: object) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    section, name = key.split(".")
    params[section][name] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# (stage, what changes, the name the one line must hold)
CHANGES = [
    ("train", lambda root: _set(root, "train.lr", 0.5), "params.yaml changed"),
    ("train", lambda root: _set(root, "train.lr", 0.5), "train: "),  # its key and values
    ("train", lambda root: _set(root, "data.limit", 10), "params.yaml"),
    ("train", lambda root: (root / "data/stats.json").write_text("{}\n"), "data/stats.json"),
    ("train", lambda root: (root / "data/raw/more.bin").write_bytes(b"1"), "data/raw"),
    ("train", lambda root: _append(root / "pipeline/core/loop.py"), "pipeline/core/loop.py"),
    ("evaluate", lambda root: _set(root, "evaluate.top_k", 2), "params.yaml"),
    ("download", lambda root: (root / "examples/images/new.png").write_bytes(b"x"), "examples"),
]


def _append(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited\n")


@pytest.mark.parametrize(
    ("stage", "change", "named"),
    CHANGES,
    ids=[
        "lr",
        "lr-values",
        "data-limit",
        "stats",
        "raw-folder",
        "code",
        "evaluate-param",
        "folder",
    ],
)
def test_a_changed_input_is_named(project: Path, stage: str, change, named: str) -> None:
    guard = InputGuard(stage, Path("params.yaml"))
    guard.check()  # nothing changed yet
    change(project)
    with pytest.raises(PipelineError, match=f"changed while stage {stage} ran") as info:
        guard.check()
    assert named in str(info.value) and "\n" not in str(info.value)


def test_changes_outside_the_stages_inputs_pass(project: Path) -> None:
    guard = InputGuard("evaluate", Path("params.yaml"))
    _set(project, "train.lr", 0.5)  # not a parameter evaluate declares
    (project / "params.yaml").write_text((project / "params.yaml").read_text())  # same bytes
    (project / "notes.txt").write_text("edited\n")  # a file no stage reads
    guard.check()


def test_a_failing_check_leaves_the_output_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    atomic.write_json(out, {"accuracy": 0.9})

    def changed() -> None:
        raise PipelineError("params.yaml changed")

    with atomic.checked(changed):
        with pytest.raises(PipelineError):
            atomic.write_json(out, {"accuracy": 0.1})
        with pytest.raises(PipelineError), atomic.staged(out) as staged:
            staged.write_text("{}")
        with pytest.raises(PipelineError), atomic.directory(tmp_path / "raw") as folder:
            (folder / "a").write_text("a")
    assert out.read_text() == '{\n  "accuracy": 0.9\n}\n'
    assert not (tmp_path / "raw").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left
    atomic.write_json(out, {"accuracy": 0.1})  # the check is gone with the block
    assert "0.1" in out.read_text()


@pytest.mark.e2e
def test_params_rewritten_while_train_runs(tmp_path: Path) -> None:
    # Many epochs and no early stop: the rewrite lands during training, whatever the machine.
    root = create_project(tmp_path / "p", {"train": {"epochs": 200, "patience": None}})
    run(["dvc", "repro", "normalization-stats"], root)
    run(["dvc", "repro", "weights"], root)  # every stage before train recorded
    lock = (root / "dvc.lock").read_bytes()
    checkpoint = root / "checkpoints" / "train.pt"
    proc = subprocess.Popen(
        ["dvc", "repro"],
        cwd=root,
        env=clean_env(PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        while not checkpoint.exists():  # the first epoch is done
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.05)
        _set_seed(root, 3)  # what `dvc exp run -S seed=3` does before DVC's lock refuses it
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "params.yaml changed while stage train ran" in errors[0], output
    assert "seed: 42 -> 3" in errors[0] and "Traceback" not in output
    assert (root / "dvc.lock").read_bytes() == lock  # nothing recorded for train
    assert not (root / "models" / "model.pt").exists()  # and no output written
    assert not (root / "metrics" / "train.json").exists()


def _set_seed(root: Path, seed: int) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["seed"] = seed
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
