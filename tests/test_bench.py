"""The benchmark's --quick mode runs end to end and writes every figure; a run of one section
(--only) merges into its CPU family's entry. Its speed is not asserted."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, run

sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmark's modules import their siblings

import bench
import speed_page

STORED = json.loads((REPO / "benchmarks/results.json").read_text())
FULL = next(iter(STORED["families"].values()))
ENGINE = {"best_seconds": 1.0, "median_seconds": 1.1, "peak_rss_mb": 100}
PREDICT = {
    "repeats": 3,
    "load_before": 1.0,
    "load_after": 1.0,
    **{
        f"pictures_{n}": {
            "onnx": ENGINE,
            "torch": ENGINE,
            "torch_over_onnx": 1.0,
            "same_top1": True,
        }
        for n in (1, 1000)
    },
}


def partial(mode: str, flags: str = FULL["machine"]["flags"]) -> dict[str, Any]:
    """What `bench.py --only predict` returns, in `mode`, on a CPU with `flags`."""
    machine = dict(FULL["machine"], flags=flags, commit="abc1234")
    return {
        "mode": mode,
        "machine": machine,
        "date": "2030-01-01 00:00",
        "sections": ["predict"],
        "predict": PREDICT,
    }


def test_a_full_partial_run_replaces_only_its_section() -> None:
    before = copy.deepcopy(STORED)
    entry = bench.keep(partial("full"), STORED)["families"][FULL["machine"]["flags"]]
    assert before == STORED  # the stored figures given are not changed in place
    assert entry["predict"] == PREDICT and entry["later"]["predict"]["commit"] == "abc1234"
    assert {k: v for k, v in entry.items() if k not in ("predict", "later")} == {
        k: v for k, v in FULL.items() if k not in ("predict", "later")
    }
    page = "\n".join(speed_page.rows(entry))
    assert "`predict` cold, 1 picture" in page and "stage `train`" in page
    assert "`predict` from a later full run of that section only, commit abc1234" in page


@pytest.mark.parametrize(
    "stored_mode, merged", [("full", False), ("quick", True)], ids=["over-full", "over-quick"]
)
def test_a_quick_partial_run_never_replaces_a_full_entry(stored_mode: str, merged: bool) -> None:
    stored = {"families": {FULL["machine"]["flags"]: dict(FULL, mode=stored_mode)}}
    entry = bench.keep(partial("quick"), stored)["families"][FULL["machine"]["flags"]]
    assert (entry.get("predict") == PREDICT) is merged and entry["mode"] == stored_mode


def test_a_partial_run_on_a_new_cpu_family_is_its_entry_and_its_page() -> None:
    families = bench.keep(partial("full", "avx2"), STORED)["families"]
    assert families["avx2"]["sections"] == ["predict"]
    assert families[FULL["machine"]["flags"]] == FULL
    page = "\n".join(speed_page.rows(families["avx2"]))
    assert "full run of predict only" in page and "stage `" not in page
    assert "ONNX below torch — missed" in page  # equal seconds: the target is missed


@pytest.mark.e2e
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
    for count in (1, 1000):  # predict's cold start after a `dvc repro` in a clone
        cold = results["predict"][f"pictures_{count}"]
        assert cold["same_top1"] and all(cold[e]["best_seconds"] > 0 for e in ("onnx", "torch"))
    assert (
        "default_dvc_repro" not in results and "preset" not in results and "folders" not in results
    )  # full only
    assert (
        "stage `train`" in proc.stderr and "auto picks bf16 only where native" in proc.stderr
    )  # the table
