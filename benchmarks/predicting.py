"""`python -m pipeline predict` cold, ONNX against torch: one picture and 1,000, each call a fresh
process (imports, model load, decoding, inference, printing), on a project after `dvc repro` on the
defaults (the evaluate stage exported models/model.onnx)."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
from common import clone, ratio, remove, timed_process
from PIL import Image

from pipeline.core import datasets, paths
from pipeline.core.repo import clean_env

ENGINES = ("onnx", "torch")
COUNTS = (1, 1000)
ONNX_MODEL = paths.MODEL.with_suffix(".onnx")


def trained_clone(project: Path) -> Path:
    """A scratch clone of `project` after a whole `dvc repro` on its parameters (download included,
    so dvc records every output); remove it with common.remove."""
    root = clone(project, data=False)
    proc = subprocess.run(
        ["dvc", "repro"], cwd=root, env=clean_env(), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise click.ClickException(f"dvc repro failed in {root}:\n{proc.stdout[-1500:]}")
    return root


def write_pictures(root: Path, folder: Path, count: int) -> list[Path]:
    """The first `count` MNIST test pictures of the project at `root` as 28×28 grey PNG files."""
    pixels, _ = datasets.read_split(datasets.get("mnist"), root / paths.RAW, train=False)
    folder.mkdir(parents=True)
    files = [folder / f"{i:04d}.png" for i in range(count)]
    for picture, path in zip(pixels[:count], files, strict=True):
        Image.fromarray(picture[0]).save(path)
    return files


def top1(output: str) -> list[str]:
    """Each picture's first class, from `predict --json` output (stderr lines may come first; the
    JSON list opens on a line of its own)."""
    start = re.search(r"^\[$", output, re.MULTILINE)
    if start is None:
        raise click.ClickException(f"predict printed no JSON:\n{output[-800:]}")
    results, _ = json.JSONDecoder().raw_decode(output[start.start() :])
    return [r["predictions"][0]["class"] for r in results]


def cold_runs(root: Path, files: list[Path], repeats: int) -> dict[str, Any]:
    """Wall seconds (best, median) and peak RSS (MB, largest) of `predict --engine E FILES` per
    engine, fresh processes interleaved `repeats` times; ClickException when the engines' top-1
    classes differ."""
    cmd = [sys.executable, "-m", "pipeline", "predict", "--json", "--top-k", "1"]
    seconds: dict[str, list[float]] = {e: [] for e in ENGINES}
    rss: dict[str, int] = dict.fromkeys(ENGINES, 0)
    classes: dict[str, list[str]] = {}
    for _ in range(repeats):
        for engine in ENGINES:
            r = timed_process([*cmd, "--engine", engine, *map(str, files)], root)
            seconds[engine].append(r["seconds"])
            rss[engine] = max(rss[engine], r["peak_rss_mb"])
            classes.setdefault(engine, top1(r["output"]))
    if classes["onnx"] != classes["torch"]:
        differ = sum(a != b for a, b in zip(classes["onnx"], classes["torch"], strict=True))
        raise click.ClickException(f"predict: onnx and torch disagree on {differ} top-1 classes")
    out: dict[str, Any] = {
        e: {
            "best_seconds": min(seconds[e]),
            "median_seconds": round(statistics.median(seconds[e]), 2),
            "peak_rss_mb": rss[e],
        }
        for e in ENGINES
    }
    out["torch_over_onnx"] = ratio(out["torch"]["best_seconds"], out["onnx"]["best_seconds"])
    out["same_top1"] = True
    return out


def measure(project: Path, trained: Path | None, repeats: int) -> dict[str, Any]:
    """The section's figures: per picture count, `cold_runs`; with the machine's load average
    (1 min) before and after, since the figures are wall seconds. `trained`: a finished project
    (models/model.onnx present) to use instead of a fresh `dvc repro` in a clone of `project`."""
    if trained is not None and not (trained / ONNX_MODEL).is_file():
        raise click.ClickException(f"{trained / ONNX_MODEL}: missing; run `dvc repro` there first")
    root = trained or trained_clone(project)
    out: dict[str, Any] = {"repeats": repeats, "load_before": round(os.getloadavg()[0], 1)}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
            for count in COUNTS:
                files = write_pictures(root, Path(tmp) / str(count), count)
                out[f"pictures_{count}"] = cold_runs(root, files, repeats)
    finally:
        if trained is None:
            remove(root)
    out["load_after"] = round(os.getloadavg()[0], 1)
    return out
