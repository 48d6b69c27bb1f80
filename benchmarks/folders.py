"""Your own pictures, measured: decoding rates (MNIST's 70,000 digits as PNG files, large JPEGs), a
no-op `dvc repro` over such a folder, peak memory on a folder larger than 4 GB decoded, MNIST as
a folder against the built-in path, and the documented path (`dvc add`, `dvc exp run`) against the
ImageFolder script people write.

    python benchmarks/folders.py --pictures 20000   # only the last, printed as JSON
"""

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


def mnist_pngs(root: Path, limit: int | None = None) -> Path:
    """The 70,000 MNIST digits as PNG files: root/{train,test}/<digit>/<n>.png; with `limit`, the
    first `limit` of them, six in seven from the training split as MNIST's own shares."""
    spec = datasets.get("mnist")
    for split, train in (("train", True), ("test", False)):
        pixels, labels = datasets.read_split(spec, paths.RAW, train=train)
        if limit is not None:
            share = limit * 6 // 7 if train else limit - limit * 6 // 7
            pixels, labels = pixels[:share], labels[:share]
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
        out["against_imagefolder"] = against_imagefolder(project, digits)
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


def git_kb(root: Path) -> int:
    """KB of the git objects of `root`, loose and packed."""
    import subprocess

    out = subprocess.run(
        ["git", "count-objects", "-v"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    sizes = dict(line.split(": ") for line in out.splitlines())
    return int(sizes["size"]) + int(sizes["size-pack"])


def tracked_project(project: Path, digits: Path, cache_type: str | None) -> tuple[Path, float]:
    """A scratch clone set up as docs/datasets.md says: the pictures in data/images, the folder
    parameters committed, `dvc add data/images` (with `cache_type` set first, when given) and its
    .dvc file committed. Returns the clone and the seconds of `dvc add`."""
    import subprocess

    from pipeline.core.repo import clean_env

    params = {"dataset": "folder", "folder": "data/images", "image_size": 28, "channels": 1}
    # MNIST's batch and epochs, as the script reads them: a folder's auto would choose more epochs
    # (docs/datasets.md), and the script has no auto.
    root = clone(project, {"data": params, "train": {"batch_size": 256, "epochs": 2}}, data=False)
    shutil.copytree(digits, root / "data/images")

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, env=clean_env(), capture_output=True, check=True)

    if cache_type:
        subprocess.run(["dvc", "config", "cache.type", cache_type], cwd=root, check=True)
    seconds = timed_process(["dvc", "add", "data/images"], root)["seconds"]
    git("add", "params.yaml", ".dvc/config", "data/images.dvc", "data/.gitignore")
    git("commit", "-q", "-m", "pictures tracked by DVC")
    return root, seconds


def against_imagefolder(
    project: Path, digits: Path, cache_type: str | None = None
) -> dict[str, Any]:
    """The documented path (`dvc add data/images`, then `dvc exp run`) against the ImageFolder
    script (benchmarks/imagefolder_script.py) on the same pictures, network and epochs: a first
    run, then a second one with train.lr changed; with the test accuracies, how much .git grew over
    both experiments, how many pictures their commits hold, and a no-op `dvc status` after."""
    import subprocess

    root, add_seconds = tracked_project(project, digits, cache_type)
    script = [sys.executable, str(Path(__file__).with_name("imagefolder_script.py")), str(digits)]
    out: dict[str, Any] = {
        "pictures": sum(1 for _ in digits.rglob("*.png")),
        "cache_type": cache_type or "reflink,copy",
        "dvc_add_seconds": add_seconds,
    }
    before = git_kb(root)
    for run, lr in (("first", "0.01"), ("second", "0.005")):
        s = timed_process([*script, lr], root)
        dvc = timed_process(["dvc", "exp", "run", "-S", f"train.lr={lr}"], root)
        out[run] = {
            "script_seconds": s["seconds"],
            "script_test_accuracy": float(s["output"].split()[-1]),
            "dvc_exp_run_seconds": dvc["seconds"],
            "dvc_test_accuracy": json.loads((root / "metrics/eval.json").read_text())["accuracy"],
            "speedup": round(s["seconds"] / dvc["seconds"], 2),
        }
    out["git_growth_kb"] = git_kb(root) - before
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    committed = [
        subprocess.run(
            ["git", "diff", "--name-only", "HEAD", ref], cwd=root, capture_output=True, text=True
        ).stdout
        for ref in refs
        if "/exec/" not in ref
    ]
    out["pictures_in_experiment_commits"] = "\n".join(committed).count("data/images/")
    out["noop_dvc_status_seconds"] = timed_process(["dvc", "status"], root)["seconds"]
    remove(root)
    return out


if __name__ == "__main__":  # only the documented path against the ImageFolder script
    import click

    @click.command()
    @click.option("--pictures", type=int, default=None, help="Write only this many [all 70,000].")
    @click.option("--cache-type", default=None, help="DVC's cache.type [DVC's default].")
    def _main(pictures: int | None, cache_type: str | None) -> None:
        """Print the figures of `against_imagefolder` as JSON (results.json is left alone)."""
        with tempfile.TemporaryDirectory(prefix="bench-folders-") as tmp:
            digits = mnist_pngs(Path(tmp) / "mnist", pictures)
            click.echo(json.dumps(against_imagefolder(Path.cwd(), digits, cache_type), indent=2))

    _main()
