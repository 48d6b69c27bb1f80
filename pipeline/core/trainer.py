"""The `train` stage's work in-process: `train(params, tracker)`, called by the stage, the benchmark
and the tests.

Loads the fitting and validation images (core.train_inputs), builds the model, runs the loop
(resuming a matching checkpoint), and writes the model, the run file, the metrics and the curves.
What it tells the tracker is all the tracking there is: with the base `Tracker` nothing is logged
anywhere.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from pipeline.core import (
    atomic,
    augment,
    checkpoints,
    cpu,
    datasets,
    distributed,
    figures,
    finetune,
    imbalance,
    loop,
    models,
    paths,
    runtime,
    weights,
)
from pipeline.core.auto import chosen_line, folder_auto
from pipeline.core.distributed import World
from pipeline.core.hooks import EpochHook
from pipeline.core.loop import EpochResult, TrainState
from pipeline.core.optim import Optimization
from pipeline.core.params import Params, TrainParams, dump_yaml, flatten
from pipeline.core.tracking import Tracker
from pipeline.core.tracking.provenance import (
    PARAMS_ARTIFACT,
    package_versions,
    write_run_file,
)
from pipeline.core.train_inputs import Inputs, load_inputs


@dataclass(frozen=True)
class TrainOutcome:
    """What a finished train run produced, besides its files."""

    run_id: str
    state: TrainState
    stopped_early: bool
    seconds: float  # inside the loop
    registered_version: str | None
    machine: dict[str, object]  # what the numbers depend on besides code, data and parameters
    pruned: bool = False  # stopped by the run's per-epoch hook (pipeline.core.hooks)

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


def logged_params(
    params: Params, world: World | None
) -> tuple[dict[str, object], dict[str, object]]:
    """(the parameters the run logs, the fingerprint a resumable checkpoint must match)."""
    # evaluate.* are logged by the evaluate stage, which is the one that reads them.
    logged = {k: v for k, v in flatten(params).items() if not k.startswith("evaluate.")}
    resumable = {k: v for k, v in logged.items() if not k.startswith("mlflow.")}
    if world is not None:
        resumable["world_size"] = world.size  # several machines: a world params.yaml does not show
    return logged, resumable


def find_checkpoint(
    fingerprint: str, main_process: bool, world: World | None, log: Callable[[str], None]
) -> checkpoints.Checkpoint | None:
    """The checkpoint this run resumes from, if one matches (rank zero's, for every rank;
    `main_process` says whether this process is rank zero)."""
    resume, notice = checkpoints.load(fingerprint) if main_process else (None, None)
    if world is not None:
        # Rank 0's checkpoint for everyone: other machines have no checkpoints/ folder of their own.
        resume, notice = world.broadcast((resume, notice))
    if notice:
        log(notice)
    if resume is not None:
        log(
            f"resuming from the checkpoint after epoch {resume.state.epoch} (MLflow run "
            f"{resume.run_id})"
        )
    return resume


def epoch_line(r: EpochResult, epochs: int) -> str:
    """The line a person reads after each epoch."""
    return (
        f"epoch {r.epoch}/{epochs}: train_loss {r.train_loss:.4f} train_acc {r.train_accuracy:.4f} "
        f"val_loss {r.val_loss:.4f} val_acc {r.val_accuracy:.4f} lr {r.lr:.2e} ({r.seconds:.1f}s)"
    )


def header_line(cfg: TrainParams, inputs: Inputs, rt: runtime.Runtime, world: World | None) -> str:
    """The line a person reads before the first epoch: what trains on what, where, how."""
    return (
        f"train: {cfg.model} on {inputs.spec.name}, {len(inputs.fit_idx)} fit / "
        f"{len(inputs.val_labels)} val images, "
        f"{rt.device.type}, {rt.autocast_dtype or 'fp32'}, {torch.get_num_threads()} threads"
        + (f" in each of {world.size} processes" if world is not None else "")
    )


def train_data(params: Params, inputs: Inputs, rt: runtime.Runtime) -> loop.TrainData:
    """The run's images on the device, with the augmentation data.augment, data.augment_policy,
    data.color_jitter, data.random_erasing, train.mixup_alpha and train.cutmix_alpha ask for, and
    the draw data.sampler asks for."""
    kind = (
        augment.kind_for(inputs.spec.channels, inputs.spec.from_folder)
        if params.data.augment
        else None
    )
    data = params.data
    return loop.TrainData.on(
        rt,
        inputs.images,
        inputs.labels,
        inputs.fit_idx,
        (inputs.val_images, inputs.val_labels),
        augment=kind,
        policy=augment.policy(
            data.augment_policy, data.color_jitter, data.random_erasing, inputs.spec.channels
        ),
        mixer=finetune.mixer(params.train, inputs.spec.num_classes),
        sample_weights=(
            imbalance.sample_weights(inputs.labels[inputs.fit_idx])
            if params.data.sampler == "balanced"
            else None
        ),
    )


def train(
    params: Params,
    tracker: Tracker,
    log: Callable[[str], None] = lambda line: None,
    hook: EpochHook | None = None,
    progress: bool = False,
    world: World | None = None,
) -> TrainOutcome:
    """Fit on the fitting split, validate every epoch, keep the best weights; write every train
    output.

    `log` gets the lines a person reads (header, one per epoch, resume notices); `hook` (on rank
    zero) sets its tags on the run and gets each epoch's result as it finishes, while the run is
    open; when it answers Stop, training ends there like an early stop, with the best weights so
    far and every output written; `progress` shows tqdm bars. With a `world` (one of several
    processes under torchrun) every rank trains its part of each batch; only rank zero writes
    outputs and checkpoints, and the caller gives the other ranks the base Tracker. Raises
    PipelineError for bad inputs, an unusable store, or training that diverged.
    """
    inputs = load_inputs(params)
    # A folder's auto batch size and epochs, by its fitting pictures; logged as the numbers chosen.
    asked = params.train
    params = dataclasses.replace(params, train=folder_auto(asked, len(inputs.fit_idx)))
    cfg = params.train
    rt = runtime.make_runtime(cfg, world)
    main_process = distributed.is_main_process(world)
    # Joined only now: an input error is found by every process alone, before any of them waits for
    # another.
    with distributed.session(world, rt.device):
        runtime.seed_everything(params.seed)
        model = models.build(*inputs.shape, inputs.norm.mean, inputs.norm.std, inputs.options)
        if inputs.start is not None:
            count = weights.load_into(
                model.net, inputs.start, weights.Target.of(params), list(inputs.spec.class_names)
            )
            log(f"starting from {cfg.weights} ({count} tensors), normalised as {inputs.statistics}")
        log(header_line(cfg, inputs, rt, world))
        for line in (chosen_line(asked, cfg), finetune.schedule_line(cfg)):
            if line:
                log(line)
        logged, resumable = logged_params(params, world)
        fingerprint = checkpoints.fingerprint(resumable, [inputs.norm.mean, inputs.norm.std])
        resume = find_checkpoint(fingerprint, main_process, world, log)
        data = train_data(params, inputs, rt)
        model = rt.place(model)
        # Built before the run opens, so that the optimizer's first imports overlap a background
        # tracker opening the store.
        loss_weights = None if inputs.class_weights is None else inputs.class_weights.to(rt.device)
        opt = Optimization.build(model, cfg, data.batches_per_epoch(cfg.batch_size), loss_weights)
        name = run_name(params)
        with tracker.train_run(
            params.mlflow.experiment_name, name, logged, resume.run_id if resume else None
        ) as run_id:
            run = Run(
                params, tracker, run_id, name, inputs, world, main_process, log, hook, fingerprint
            )
            outcome = run.fit(model, data, opt, rt, resume, progress)
            if not main_process:  # rank zero holds the same weights and writes everything
                return outcome
        checkpoints.remove()
        return outcome


@dataclass
class Run:
    """One open train run: what it tells the tracker at its start, after each epoch and at its
    end."""

    params: Params
    tracker: Tracker
    run_id: str
    name: str
    inputs: Inputs
    world: World | None
    is_main_process: bool  # rank zero, or the only process: writes outputs and checkpoints
    log: Callable[[str], None]
    hook: EpochHook | None
    fingerprint: str
    pruned: bool = False  # the hook stopped the run

    def fit(
        self,
        model: nn.Module,
        data: loop.TrainData,
        opt: Optimization,
        rt: runtime.Runtime,
        resume: checkpoints.Checkpoint | None,
        progress: bool,
    ) -> TrainOutcome:
        """Train from `resume` (or the start) in this run; on rank zero, record and write the
        result."""
        cfg = self.params.train
        self.start(resume, self.hook.tags() if self.hook is not None else None)
        start = time.perf_counter()
        state = resume.state if resume else TrainState.start(self.params.seed)
        state = loop.fit(
            model, data, opt, cfg, rt, state, self.after_epoch, progress=progress, world=self.world
        )
        seconds = time.perf_counter() - start
        if not self.is_main_process:
            return TrainOutcome(
                self.run_id,
                state,
                stopped_early=state.epoch < cfg.epochs,
                seconds=seconds,
                registered_version=None,
                machine={},
            )
        return self.finish(model, state, seconds, rt)

    def start(self, resume: checkpoints.Checkpoint | None, tags: Mapping[str, str] | None) -> None:
        """What the run records before its first epoch: the data, the environment, a resumed run's
        curves."""
        tracker, inputs, world = self.tracker, self.inputs, self.world
        if (
            resume is not None and self.run_id != resume.run_id
        ):  # a new run: give it the curves so far
            for r in resume.state.history:
                tracker.log_metrics(r.metrics(), step=r.epoch)
        digest = (
            ""
            if not self.is_main_process
            else datasets.folder_digest(paths.RAW)
            if inputs.spec.from_folder
            else datasets.digest(inputs.images, inputs.labels)
        )
        tracker.log_dataset(
            inputs.spec.name,
            digest,
            paths.RAW,
            {"fit": len(inputs.fit_idx), "validation": len(inputs.val_labels)},
        )
        if (
            inputs.spec.from_folder
        ):  # what it learned from: pictures per class and split, the skipped files
            tracker.log_file(paths.RAW / inputs.spec.folder / "report.json")
        tracker.set_tags(
            {
                "dataset": inputs.spec.name,
                "dataset.digest": digest,
                **({"world_size": str(world.size)} if world is not None else {}),
                **weights.tags(inputs.start, inputs.statistics),
                **(tags or {}),
            }
        )
        tracker.log_text(package_versions(), "environment/pip-freeze.txt")
        tracker.log_text(dump_yaml(self.params), PARAMS_ARTIFACT)  # every value whole, however long

    def after_epoch(self, r: EpochResult, state: TrainState) -> bool:
        """Checkpoint, record and print the epoch, then ask the hook; True when the hook stopped the
        run (the same on every rank)."""
        if self.is_main_process:
            checkpoints.save(state, self.fingerprint, self.run_id)
            self.tracker.log_metrics(r.metrics(), step=r.epoch)
            # Recorded before the epoch's line is printed: a stage killed after it has the epoch in
            # its checkpoint and its run alike, and a lost store stops training at once.
            self.tracker.flush()
            self.log(epoch_line(r, self.params.train.epochs))
            stop = self.hook.after_epoch(r) if self.hook is not None else None
            if stop is not None:
                self.tracker.set_tags(dict(stop.tags))
                self.log(stop.reason)
                self.pruned = True
        if self.world is not None:  # rank zero's hook decides for every rank, or they would wait
            self.pruned = bool(self.world.broadcast(self.pruned))
        return self.pruned

    def finish(
        self, model: nn.Module, state: TrainState, seconds: float, rt: runtime.Runtime
    ) -> TrainOutcome:
        """Record the result and write every output; models/model.pt only once the store holds the
        model."""
        tracker, inputs, cfg = self.tracker, self.inputs, self.params.train
        # Timing goes to the tracker only: metrics files must be identical between identical runs.
        tracker.log_metrics(
            {"best_val_accuracy": state.best.val_accuracy, "train_seconds": seconds},
            step=state.best_epoch,
        )
        # A store lost during training fails the run here, before any output is replaced.
        tracker.flush()
        atomic.write_bytes(
            paths.TRAIN_SAMPLES_PLOT,
            figures.training_samples(
                inputs.images, inputs.labels, inputs.fit_idx, inputs.spec.class_names
            ),
        )
        tracker.log_file(paths.TRAIN_SAMPLES_PLOT)
        model_uri, version = self.save_model(model)
        outcome = TrainOutcome(
            self.run_id,
            state,
            stopped_early=state.epoch < cfg.epochs,
            seconds=seconds,
            registered_version=version,
            machine=machine(cfg, rt, self.world),
            pruned=self.pruned,
        )
        write_run_file(
            paths.RUN_FILE, self.run_id, self.params.mlflow.experiment_name, self.name, model_uri
        )
        atomic.write_json(paths.TRAIN_METRICS, outcome.summary())
        columns = [f.name for f in fields(EpochResult)]
        atomic.write_csv(
            paths.TRAIN_PLOT, columns, ([asdict(r)[c] for c in columns] for r in state.history)
        )
        return outcome

    def save_model(self, model: nn.Module) -> tuple[str, str | None]:
        """Write models/model.pt once the store holds the model (and registered it when
        mlflow.register_model asks); (the logged model's URI, its registered version or None)."""
        params, inputs = self.params, self.inputs
        meta = {
            "architecture": params.train.model,
            "options": models.options_dict(inputs.options),
            "dataset": inputs.spec.name,
            "in_channels": inputs.spec.channels,
            "image_size": inputs.spec.image_size,
            "class_names": list(inputs.spec.class_names),
            "mean": list(inputs.norm.mean),
            "std": list(inputs.norm.std),
            # Only with starting weights: a default model.pt keeps its bytes.
            **(
                {"weights": params.train.weights, "normalization": inputs.statistics}
                if inputs.start is not None
                else {}
            ),
        }
        with atomic.staged(paths.MODEL) as model_file:
            models.save(model_file, model, meta)
            model_uri = self.tracker.log_model(model_file, self.name, meta)
            version = None
            if params.mlflow.register_model:
                version = self.tracker.register(
                    model_uri, params.mlflow.register_model, params.mlflow.model_alias
                )
        if version is not None:
            self.log(
                f"registered {params.mlflow.register_model} version {version} as "
                f"@{params.mlflow.model_alias}"
            )
        return model_uri, version


def machine(cfg: TrainParams, rt: runtime.Runtime, world: World | None) -> dict[str, object]:
    """What a run's numbers depend on besides code, data and parameters (in metrics/train.json)."""
    return {
        "cpu": cpu.flags(),
        "kernels": torch.backends.cpu.get_cpu_capability(),
        "precision": str(rt.autocast_dtype or "fp32").removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "portable": cfg.portable,
        **({"world_size": world.size} if world is not None else {}),
    }
