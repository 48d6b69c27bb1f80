"""`pipeline repro-check`'s comparisons, on given numbers: model hashes per CPU family, metrics
against the reference within its tolerance. (Reruns for real: test_reproducibility.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest


def test_recorded_hashes_are_compared_per_family() -> None:
    from pipeline_tools.repro_check import hash_check

    # Exact within a family; another family's model is shown, not required equal (its metrics are
    # compared).
    recorded = {"avx2": "a" * 64, "avx2 avx512_bf16 avx512f": "b" * 64}
    lines, differs = hash_check("a" * 64, recorded, here="avx2")
    assert differs is False
    assert lines == [
        "  recorded on [avx2] (this CPU family): aaaaaaaaaaaaaaaa… same",
        "  recorded on [avx2 avx512_bf16 avx512f] (another family): bbbbbbbbbbbbbbbb… other bytes "
        "(equal only within a family; metrics are compared)",
    ]
    assert hash_check("c" * 64, recorded, here="avx2")[1] is True
    lines, differs = hash_check("a" * 64, {}, here="avx2")
    assert differs is False and "nothing recorded on [avx2] yet" in lines[0]


def test_reference_comparison_uses_the_tolerance() -> None:
    from pipeline_tools.repro_check import report
    from pipeline_tools.rerun import Outcome

    run1 = Outcome(
        hashes={"models/model.pt": "a" * 64}, metrics={"eval.accuracy": 0.9500, "eval.loss": 0.2}
    )
    rows, off = report(run1, run1, {"eval.accuracy": 0.9515, "eval.loss": 0.25}, tolerance=0.002)
    assert off == ["eval.loss"]
    assert [r[-1] for r in rows] == ["ok", "OFF", "same"]
    # A --config run has no reference: each metric's status is whether the two runs agree.
    run2 = Outcome(
        hashes={"models/model.pt": "a" * 64}, metrics={"eval.accuracy": 0.9500, "eval.loss": 0.3}
    )
    rows, off = report(run1, run2, None, tolerance=0.002)
    assert off == []
    assert [r[-1] for r in rows] == ["same", "DIFFERENT", "same"]
    assert {r[3] for r in rows[:2]} == {"-"}


@pytest.mark.parametrize(
    ("config", "extra", "needles"),
    [
        (None, [], ("--config", "nope.yaml", "no such file")),
        ("train:\n  lr: -1\n", [], ("train.lr",)),
        ("train: {epochs: 1\n", [], ("mine.yaml", "line")),
        ("train:\n  epochs: 1\n", ["--update-reference"], ("--config", "--update-reference")),
        ("train:\n  epochs: 1\n", ["--record-hash"], ("--config", "--record-hash")),
    ],
    ids=["missing", "bad-value", "damaged", "with-update-reference", "with-record-hash"],
)
def test_a_bad_config_is_one_line_and_clones_nothing(
    make_project, tmp_path: Path, config: str | None, extra: list[str], needles: tuple[str, ...]
) -> None:
    from helpers import assert_one_line_error, run

    root = make_project()
    name = "nope.yaml"
    if config is not None:
        name = "mine.yaml"
        (root / name).write_text(config)
    clones = tmp_path / "clones"
    clones.mkdir()
    proc = run(
        ["python", "-m", "pipeline", "repro-check", "--config", name, *extra],
        root,
        check=False,
        TMPDIR=str(clones),
    )
    assert_one_line_error(proc, *needles)
    assert list(clones.iterdir()) == []


def test_the_reference_holds_every_metric_the_pipeline_writes() -> None:
    """repro/reference.json was missing the metrics evaluate gained later (shown as "no reference",
    never checked across CPU families): its keys are those of the committed default run's metrics
    (the CI configuration has the same ten classes)."""
    import json

    from helpers import REPO

    from pipeline_tools.repro_check import REFERENCE
    from pipeline_tools.rerun import collect_metrics

    assert set(json.loads((REPO / REFERENCE).read_text())) == set(collect_metrics(REPO))
