"""The `train` stage's work in-process: `train(params, tracker)`, called by the stage, the benchmark and the tests.

Loads the fitting and validation images, builds the model, runs the loop (resuming a matching
checkpoint), and writes the model, the run file, the metrics and the curves. What it tells the
tracker is all the tracking there is: with the base `Tracker` nothing is logged anywhere.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields

import torch

from pipeline.core import (atomic, checkpoints, cpu, datasets, distributed, figures, loop, models, normalization, paths,
                           splits)
from pipeline.core.distributed import World
from pipeline.core.loop import EpochResult, TrainState
from pipeline.core.optim import Optimization
from pipeline.core.params import Params, flatten
from pipeline.core.tracking import Tracker, package_versions, write_run_file


@dataclass(frozen=True)
class TrainOutcome:
    """What a finished train run produced, besides its files."""

    run_id: str
    state: TrainState
    stopped_early: bool
    seconds: float  # inside the loop
    registered_version: str | None
    machine: dict[str, object]  # what the numbers depend on besides code, data and parameters
    pruned: bool = False  # stopped by `on_epoch` (a sweep trial its pruner stopped)

    def summary(self) -> dict[str, object]:
        """The content of metrics/train.json (no timings: identical runs give identical files)."""
        best = self.state.best
        return {
            "best_val_accuracy": best.val_accuracy,
            "best_val_loss": best.val_loss,
            "best_epoch": self.state.best_epoch,
            "epochs_run": len(self.state.history),
            "stopped_early": self.stopped_early,
            "mlflow_run_id": self.run_id,
            **self.machine,
            # Only when true: metrics/train.json of an ordinary run keeps its shape.
            **({"pruned": True} if self.pruned else {}),
        }


def run_name(params: Params) -> str:
    """A name a person can read in the MLflow UI, e.g. mnist-cnn-lr0.01-<dvc experiment>."""
    name = f"{params.data.dataset}-{params.train.model}-lr{params.train.lr:g}"
    exp = os.environ.get("DVC_EXP_NAME")
    return f"{name}-{exp}" if exp else name


def train(
    params: Params,
    tracker: Tracker,
    log: Callable[[str], None] = lambda line: None,
    on_epoch: Callable[[EpochResult], bool | None] = lambda result: None,
    progress: bool = False,
    tags: Mapping[str, str] | None = None,
    world: World | None = None,
) -> TrainOutcome:
    """Fit on the fitting split, validate every epoch, keep the best weights; write every train output.

    `log` gets the lines a person reads (header, one per epoch, resume notices); `on_epoch` gets each
    epoch's result as it finishes (while the run is open, on rank 0) and returns True to prune: training
    stops there and ends like an early stop, with the best weights so far and every output written;
    `progress` shows tqdm bars; `tags` are set on the run (e.g. the sweep trial it belongs to). With a
    `world` (one of several processes under torchrun) every rank trains its part of each batch; only
    rank 0 writes outputs and checkpoints, and the caller gives the other ranks the base Tracker.
    """
    cfg = params.train
    if cfg.portable and not cpu.pinned():
        cpu.pin()  # raises when torch is already loaded without the pins
    spec = datasets.get(params.data.dataset)
    options = models.options_from(cfg)
    shape = (cfg.model, spec.channels, spec.image_size, spec.num_classes)
    blame = {"mlp": "train.mlp_hidden", "cnn": "train.cnn_channels"}.get(cfg.model, "train.batch_size")
    models.check_fits(*shape, options, cfg.batch_size, blame)  # before any data is loaded
    norm = normalization.load(paths.STATS, spec.name, spec.channels)
    images, labels = datasets.load_split(spec, paths.RAW, train=True)
    fit_idx, val_idx = map(torch.from_numpy, splits.split_indices(labels, params.data.val_size, params.seed,
                                                                  params.data.limit))
    rt = loop.make_runtime(cfg, world)
    # Joined only now: an input error is found by every process alone, before any of them waits for another.
    with distributed.session(world, cfg):
        lead = world is None or world.lead  # the process that writes outputs and checkpoints
        loop.seed_everything(params.seed)
        model = models.build(*shape, norm.mean, norm.std, options)
        log(
            f"train: {cfg.model} on {spec.name}, {len(fit_idx)} fit / {len(val_idx)} val images, "
            f"{rt.device.type}, {rt.autocast_dtype or 'fp32'}, {torch.get_num_threads()} threads"
            + (f" in each of {world.size} processes" if world is not None else "")
        )

        name = run_name(params)
        # evaluate.* are logged by the evaluate stage, which is the one that reads them.
        logged = {k: v for k, v in flatten(params).items() if not k.startswith("evaluate.")}
        resumable = {k: v for k, v in logged.items() if not k.startswith("mlflow.")}
        if world is not None:
            resumable["world_size"] = world.size  # several machines: a world params.yaml does not show
        fingerprint = checkpoints.fingerprint(resumable, [norm.mean, norm.std])
        resume, notice = checkpoints.load(fingerprint) if lead else (None, None)
        if world is not None:
            # Rank 0's checkpoint for everyone: other machines have no checkpoints/ folder of their own.
            resume, notice = world.broadcast((resume, notice))
        if notice:
            log(notice)
        if resume is not None:
            log(f"resuming from the checkpoint after epoch {resume.state.epoch} (MLflow run {resume.run_id})")
        data = loop.TrainData.on(rt, images, labels, fit_idx, val_idx, augment=params.data.augment)
        model = rt.place(model)
        # Before the run opens: building the first optimizer imports torch._dynamo (~2 s), which then
        # overlaps a background tracker opening the store.
        opt = Optimization.build(model, cfg, data.batches_per_epoch(cfg.batch_size))
        with tracker.train_run(params.mlflow.experiment_name, name, logged, resume.run_id if resume else None) as run_id:
            if resume is not None and run_id != resume.run_id:  # a new run: give it the curves so far
                for r in resume.state.history:
                    tracker.log_metrics(r.metrics(), step=r.epoch)
            data_digest = datasets.digest(images, labels) if lead else ""
            tracker.log_dataset(spec.name, data_digest, paths.RAW, {"fit": len(fit_idx), "validation": len(val_idx)})
            tracker.set_tags({"dataset": spec.name, "dataset.digest": data_digest,
                              **({"world_size": str(world.size)} if world is not None else {}), **(tags or {})})
            tracker.log_text(package_versions(), "environment/pip-freeze.txt")

            pruned = False

            def after_epoch(r: EpochResult, state: TrainState) -> bool:
                nonlocal pruned
                if lead:
                    checkpoints.save(state, fingerprint, run_id)
                    tracker.log_metrics(r.metrics(), step=r.epoch)
                    # Recorded before the epoch's line is printed: a stage killed after it has the epoch in
                    # its checkpoint and its run alike, and a lost store stops training at once (a round
                    # trip per epoch to an idle background tracker).
                    tracker.flush()
                    log(
                        f"epoch {r.epoch}/{cfg.epochs}: train_loss {r.train_loss:.4f} train_acc {r.train_accuracy:.4f} "
                        f"val_loss {r.val_loss:.4f} val_acc {r.val_accuracy:.4f} lr {r.lr:.2e} ({r.seconds:.1f}s)"
                    )
                    pruned = bool(on_epoch(r))
                if world is not None:  # rank 0's pruner decides for every rank, or they would wait forever
                    pruned = bool(world.broadcast(pruned))
                return pruned

            start = time.perf_counter()
            state = resume.state if resume else TrainState.start(params.seed)
            state = loop.fit(model, data, opt, cfg, rt, state, after_epoch, progress=progress, world=world)
            seconds = time.perf_counter() - start
            if not lead:  # rank 0 holds the same weights and writes everything
                return TrainOutcome(run_id, state, stopped_early=state.epoch < cfg.epochs, seconds=seconds,
                                    registered_version=None, machine={})
            # Timing goes to the tracker only: metrics files must be identical between identical runs.
            tracker.log_metrics({"best_val_accuracy": state.best.val_accuracy, "train_seconds": seconds},
                                step=state.best_epoch)
            tracker.flush()  # a store lost during training fails the run here, before any output is replaced
            atomic.write_bytes(paths.TRAIN_SAMPLES_PLOT, figures.training_samples(images, labels, fit_idx, spec.class_names))
            tracker.log_file(paths.TRAIN_SAMPLES_PLOT)
            meta = {
                "architecture": cfg.model,
                "options": models.options_dict(options),
                "dataset": spec.name,
                "in_channels": spec.channels,
                "image_size": spec.image_size,
                "class_names": list(spec.class_names),
                "mean": list(norm.mean),
                "std": list(norm.std),
            }
            # models/model.pt is replaced only once the store holds the model (and its registration).
            with atomic.staged(paths.MODEL) as model_file:
                models.save(model_file, model, meta)
                model_uri = tracker.log_model(model_file, name, meta)
                version = None
                if params.mlflow.register_model:
                    version = tracker.register(model_uri, params.mlflow.register_model, params.mlflow.model_alias)
            if version is not None:
                log(f"registered {params.mlflow.register_model} version {version} as @{params.mlflow.model_alias}")
            machine = {"cpu": cpu.flags(), "kernels": torch.backends.cpu.get_cpu_capability(),
                       "precision": str(rt.autocast_dtype or "fp32").removeprefix("torch."),
                       "threads": torch.get_num_threads(), "portable": cfg.portable,
                       **({"world_size": world.size} if world is not None else {})}
            outcome = TrainOutcome(run_id, state, stopped_early=state.epoch < cfg.epochs, seconds=seconds,
                                   registered_version=version, machine=machine, pruned=pruned)
            write_run_file(paths.RUN_FILE, run_id, params.mlflow.experiment_name, name, model_uri)
            atomic.write_json(paths.TRAIN_METRICS, outcome.summary())
            columns = [f.name for f in fields(EpochResult)]
            atomic.write_csv(paths.TRAIN_PLOT, columns, ([asdict(r)[c] for c in columns] for r in state.history))
        checkpoints.remove()
        return outcome
