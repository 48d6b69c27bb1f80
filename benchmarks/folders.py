"""Your own pictures, measured: decoding rates (MNIST's 70,000 digits as PNG files, large JPEGs), a
no-op `dvc repro` over such a folder, peak memory on a folder larger than 4 GB decoded, and MNIST as
a folder against the built-in path."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import clone, remove, timed_process
from PIL import Image

from pipeline.core import datasets, folders, images, paths


def mnist_pngs(root: Path) -> Path:
    """The 70,000 MNIST digits as PNG files: root/{train,test}/<digit>/<n>.png."""
    spec = datasets.get("mnist")
    for split, train in (("train", True), ("test", False)):
        pixels, labels = datasets.read_split(spec, paths.RAW, train=train)
        for digit in range(10):
            (root / split / str(digit)).mkdir(parents=True, exist_ok=True)
        for i, (picture, label) in enumerate(zip(pixels, labels, strict=False)):
            Image.fromarray(picture[0]).save(root / split / str(int(label)) / f"{i:05d}.png")
    return root


def decode_rate(folder: Path, channels: int, size: int) -> dict[str, Any]:
    """Pictures per second decoded by the download stage's code, every core, into a scratch
    folder."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report = folders.decode(
            folders.scan(folder),
            channels,
            size,
            Path(out) / "folder",
            len(os.sched_getaffinity(0)),
            lambda *a: None,
        )
        seconds = time.perf_counter() - start
    count = sum(split["count"] for split in report["splits"].values())
    return {
        "pictures": count,
        "seconds": round(seconds, 1),
        "pictures_per_s": round(count / seconds),
    }


def big_jpegs(count: int = 40) -> dict[str, Any]:
    """Decoding 4000×3000 JPEG photographs to 224 px: with Pillow's draft (as the stage does) and
    without."""
    import skimage

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        for _k, name in enumerate(("astronaut.png", "coffee.png")):
            (folder / name.split(".")[0]).mkdir(parents=True)
            big = (
                Image.open(Path(skimage.data_dir) / name)
                .convert("RGB")
                .resize((4000, 3000), Image.Resampling.BICUBIC)
            )
            for i in range(count // 2):
                big.save(folder / name.split(".")[0] / f"{i}.jpg", quality=90 - i % 5)
        drafted = decode_rate(folder, 3, 224)
        files = sorted(folder.rglob("*.jpg"))[:8]
        start = time.perf_counter()
        for path in files:  # the same conversion without draft: every pixel decoded
            with Image.open(path) as img:
                img.load()
                images.prepare(img, 3, 224)
        full = len(files) / (time.perf_counter() - start)
    return {
        "size": "4000x3000",
        "with_draft_per_s": drafted["pictures_per_s"],
        "without_draft_per_s_one_core": round(full, 1),
    }


def solid_folder(root: Path, count: int, size: int) -> Path:
    """`count` colour pictures of `size` px in 10 classes (flat colours: small files, full-size
    decoded rows)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        Image.new("RGB", (size, size), colour).save(folder / f"{i:06d}.png")
    return root


def as_folder_run(
    project: Path, folder: Path, params: dict[str, Any], stages: tuple[str, ...]
) -> dict[str, Any]:
    """The stages on `folder` as data.dataset folder in a scratch clone: each stage's seconds and
    peak RSS, the test accuracy when evaluated, and a no-op `dvc repro download` after (DVC
    re-hashes the folder)."""
    root = clone(
        project,
        {
            "data": {"dataset": "folder", "folder": str(folder), **params.get("data", {})},
            **{k: v for k, v in params.items() if k != "data"},
        },
        data=False,
    )
    out: dict[str, Any] = {}
    import subprocess

    from pipeline.core.repo import clean_env

    subprocess.run(
        ["dvc", "repro", "download"], cwd=root, env=clean_env(), capture_output=True, check=True
    )
    out["noop_repro_download_seconds"] = timed_process(["dvc", "repro", "download"], root)[
        "seconds"
    ]
    for stage in stages:
        r = timed_process([sys.executable, "-m", f"pipeline.stages.{stage}"], root)
        out[stage] = {"seconds": r["seconds"], "peak_rss_mb": r["peak_rss_mb"]}
    if "evaluate" in stages:
        out["test_accuracy"] = json.loads((root / "metrics/eval.json").read_text())["accuracy"]
    report = json.loads((root / "data/raw/folder/report.json").read_text())
    out["decoded_gb"] = round(
        sum(s["count"] for s in report["splits"].values())
        * report["channels"]
        * report["image_size"] ** 2
        / 1e9,
        2,
    )
    remove(root)
    return out


def measure(project: Path) -> dict[str, Any]:
    """Every folder figure (several minutes: 70,000 PNGs written and decoded, a folder of over 4 GB
    decoded)."""
    with tempfile.TemporaryDirectory(prefix="bench-folders-") as tmp:
        digits = mnist_pngs(Path(tmp) / "mnist")
        out: dict[str, Any] = {
            "mnist_png_decode": decode_rate(digits, 1, 28),
            "big_jpeg_decode": big_jpegs(),
        }
        out["mnist_as_folder"] = as_folder_run(
            project,
            digits,
            {"data": {"image_size": 28, "channels": 1}},
            ("normalization_stats", "train", "evaluate"),
        )
        shutil.rmtree(digits)
        large = solid_folder(
            Path(tmp) / "large", 90_000, 128
        )  # 90,000 × 3 × 128 × 128 bytes: 4.4 GB decoded
        out["large_folder"] = as_folder_run(
            project,
            large,
            {"data": {"image_size": 128, "channels": 3, "limit": 40_000}, "train": {"epochs": 1}},
            ("normalization_stats", "train"),
        )
    return out
