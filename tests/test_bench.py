"""The benchmark's --quick mode runs end to end and writes every figure (its speed is not
asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import REPO, run

pytestmark = pytest.mark.e2e


def test_quick_benchmark_writes_its_json(make_project, tmp_path: Path) -> None:
    root = make_project()
    run(["python", "-m", "pipeline", "download"], root)
    run(["python", "-m", "pipeline", "normalization-stats"], root)
    out = tmp_path / "results.json"
    proc = run(
        [
            "python",
            str(REPO / "benchmarks" / "bench.py"),
            "--quick",
            "--project",
            str(root),
            "--out",
            str(out),
        ],
        root,
    )
    results = json.loads(out.read_text())
    assert json.loads(proc.stdout) == results
    assert (
        results["mode"] == "quick"
        and results["machine"]["cores"] >= 1
        and results["machine"]["flags"]
    )
    for stage in ("normalization_stats", "train", "evaluate"):
        figures = results["stages"][stage]
        assert 0 < figures["fixed_seconds"] <= figures["seconds"] and figures["help_seconds"] > 0
        assert figures["peak_rss_mb"] > 50
    assert (
        results["stages"]["train"]["fixed_seconds"] < results["stages"]["train"]["seconds"]
    )  # the loop is not fixed cost
    precision = results["precision"]
    assert (
        precision["fp32_wall_img_per_s"] > 0
        and precision["bf16_wall_img_per_s"] > 0
        and precision["bf16_over_fp32"] > 0
    )
    assert (
        results["throughput"]["baseline_img_per_s"] > 0
        and results["throughput"]["ours_img_per_s"] > 0
    )
    tracking = results["tracking"]
    for stage in ("train", "evaluate"):
        assert all(
            tracking[f"{stage}_{kind}_seconds"] > 0 for kind in ("process", "inprocess", "none")
        )
    assert results["internals"]["log_model_without_swap_seconds"] > 0
    assert (
        "default_dvc_repro" not in results and "preset" not in results and "folders" not in results
    )  # full only
    assert (
        "stage `train`" in proc.stderr and "auto picks bf16 only where native" in proc.stderr
    )  # the table
