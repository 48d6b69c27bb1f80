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
    assert results["mode"] == "quick" and results["machine"]["cores"] >= 1
    assert results["throughput"]["baseline_img_per_s"] > 0 and results["throughput"]["ours_img_per_s"] > 0
    assert results["throughput"]["ratio"] > 0
    assert results["normalization_stats"]["ratio"] > 0
    assert results["train_process"]["peak_rss_mb"] > 100
    assert "overhead_percent" in results["train_process"]
    assert "seconds" in results["noop_dvc_repro"]
