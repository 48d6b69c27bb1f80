"""The benchmark's --quick mode runs end to end and writes every figure (its speed is not asserted)."""
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
    proc = run(["python", str(REPO / "benchmarks" / "bench.py"), "--quick", "--project", str(root), "--out", str(out)], root)
    results = json.loads(out.read_text())
    assert json.loads(proc.stdout) == results
    assert results["mode"] == "quick" and results["machine"]["cores"] >= 1 and results["machine"]["flags"]
    for stage in ("normalization_stats", "train", "evaluate"):
        figures = results["stages"][stage]
        assert 0 < figures["fixed_seconds"] <= figures["seconds"] and figures["help_seconds"] > 0
        assert figures["peak_rss_mb"] > 50
    assert results["stages"]["train"]["fixed_seconds"] < results["stages"]["train"]["seconds"]  # the loop is not fixed cost
    assert results["throughput"]["baseline_img_per_s"] > 0 and results["throughput"]["ours_img_per_s"] > 0
    assert results["throughput"]["ratio"] > 0 and results["normalization_stats"]["ratio"] > 0
    share = results["mlflow_share"]
    assert share["tracked_seconds"] > 0 and share["untracked_seconds"] > 0 and "mlflow_percent" in share
    assert "time_to_99" not in results and "preset" not in results  # full mode only
    assert "stage train (s)" in proc.stderr and "MLflow's share" in proc.stderr  # the table for people
