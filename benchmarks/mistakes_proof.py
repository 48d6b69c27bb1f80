"""The numbers of docs/mistakes.md: planted label noise found by `mistakes`, and a rare class with
no weighting, class weights and balanced sampling. MNIST digits written as PNG files (a subset),
trained by the stages themselves in a throwaway copy of the project.

    python benchmarks/mistakes_proof.py [SEED …]   # prints JSON; default seed 42
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers import create_project  # noqa: E402 (tests/ is not a package)

TRAIN, TEST = 6000, 1000  # pictures written: 600 and 100 per digit
PARAMS = {
    "data": {
        "dataset": "folder",
        "folder": "data/images",
        "image_size": 28,
        "channels": 1,
        "limit": None,
    },
    "train": {"epochs": 4, "batch_size": 64, "patience": None},
}
NOISY = (7, 1)  # 2 % of the 7s moved into 1/
RARE = 5  # cut to 1 % of its pictures


def stage(root: Path, *args: str) -> str:
    """`python -m pipeline ARGS` in the project; its stdout (fails loudly)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=root, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)}: {proc.stderr}")
    return proc.stdout


def write_pngs(root: Path, pixels: np.ndarray, labels: np.ndarray, split: str, per: int) -> None:
    """The first `per` pictures of each digit as root/<split>/<digit>/<split>-<index>.png."""
    for digit in range(10):
        folder = root / split / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == digit)[:per]:
            Image.fromarray(pixels[i][0]).save(folder / f"{split}-{i:05d}.png")


def project(base: Path, name: str, seed: int) -> Path:
    """A project whose data/images holds the MNIST subset (mnist's own files fetched first)."""
    root = create_project(base / name, {"seed": seed})
    stage(root, "download")
    from pipeline.core import datasets

    spec = datasets.get("mnist")
    for split, train, count in (("train", True, TRAIN), ("test", False, TEST)):
        pixels, labels = datasets.read_split(spec, root / "data/raw", train=train)
        write_pngs(root / "data/images", pixels, labels, split, count // 10)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(PARAMS["data"])
    params["train"].update(PARAMS["train"])
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def pipeline(root: Path, **train: Any) -> dict[str, Any]:
    """download → normalization-stats → train → evaluate with these train.* / data.* overrides."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in train.items():
        section, name = key.split("__")
        params[section][name] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("download", "normalization-stats", "train", "evaluate"):
        stage(root, name)
    return json.loads((root / "metrics/eval.json").read_text())


def planted_noise(base: Path, seed: int) -> dict[str, Any]:
    """Move 2 % of one digit's training pictures into another's folder; how many of the N moved
    `mistakes --split train --top 2N` lists."""
    root = project(base, "noise", seed)
    source, target = (root / "data/images/train" / str(d) for d in NOISY)
    pictures = sorted(source.iterdir())
    rng = np.random.default_rng(seed)
    moved = [pictures[i] for i in rng.choice(len(pictures), len(pictures) // 50, replace=False)]
    for path in moved:
        shutil.move(path, target / path.name)
    pipeline(root)
    listed = json.loads(
        stage(root, "mistakes", "--split", "train", "--top", str(2 * len(moved)), "--json")
    )
    names = {f"train/{NOISY[1]}/{p.name}" for p in moved}
    found = [row["picture"] for row in listed if row["picture"] in names]
    return {"moved": len(moved), "listed": len(listed), "found": len(found), "found_files": found}


def rare_class(base: Path, seed: int) -> list[dict[str, Any]]:
    """One digit cut to 1 %: its test recall and the balanced accuracy under each remedy."""
    root = project(base, "rare", seed)
    pictures = sorted((root / "data/images/train" / str(RARE)).iterdir())
    for path in pictures[len(pictures) // 100 :]:
        path.unlink()
    rows = []
    for label, settings in (
        ("none", {"train__class_weights": "none", "data__sampler": "shuffle"}),
        (
            "train.class_weights: balanced",
            {"train__class_weights": "balanced", "data__sampler": "shuffle"},
        ),
        ("data.sampler: balanced", {"train__class_weights": "none", "data__sampler": "balanced"}),
    ):
        metrics = pipeline(root, **settings)
        confusion = confusion_matrix(root)
        recall = np.diag(confusion) / confusion.sum(1)
        rows.append(
            {
                "remedy": label,
                "rare_recall": float(recall[RARE]),
                "balanced_accuracy": float(recall.mean()),
                "accuracy": metrics["accuracy"],
            }
        )
    return rows


def confusion_matrix(root: Path) -> np.ndarray:
    """10×10 counts (rows: true digit) from plots/confusion.csv."""
    import csv

    matrix = np.zeros((10, 10), dtype=np.int64)
    with open(root / "plots/confusion.csv") as fh:
        for row in csv.DictReader(fh):
            matrix[int(row["actual"]), int(row["predicted"])] += 1
    return matrix


def main() -> None:
    seeds = [int(s) for s in sys.argv[1:]] or [42]
    out = {}
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="mistakes-proof-") as tmp:
            out[seed] = {
                "planted_noise": planted_noise(Path(tmp), seed),
                "rare_class": rare_class(Path(tmp), seed),
            }
        print(json.dumps({seed: out[seed]}), flush=True)


if __name__ == "__main__":
    main()
