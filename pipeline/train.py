"""Stage `train`: fit the model, track the run in MLflow, write the model and training curves."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import click

from pipeline import paths
from pipeline.cli import reports_errors
from pipeline.params import Params, flatten, load_params


def run_name(params: Params) -> str:
    """A name a person can read in the MLflow UI, e.g. mnist-cnn-lr0.01-<dvc experiment>."""
    name = f"{params.data.dataset}-{params.train.model}-lr{params.train.lr:g}"
    exp = os.environ.get("DVC_EXP_NAME")
    return f"{name}-{exp}" if exp else name


@click.command()
@click.option("--params", "params_file", type=click.Path(path_type=Path), default=paths.PARAMS, show_default=True)
@reports_errors
def main(params_file: Path) -> None:
    """Train on the fitting split, validate every epoch, keep the best weights."""
    params = load_params(params_file)
    # Imported once the parameters are valid: a typo is reported at once, not after ~4 s of imports.
    import mlflow
    import torch

    from pipeline import atomic, checkpoints, datasets, models, splits, stats, tracking, training

    tracking.check_reachable(tracking.tracking_uri())  # before any work, not after an hour of training
    cfg = params.train
    spec = datasets.get(params.data.dataset)
    norm = stats.load(paths.STATS, spec.name)
    images, labels = datasets.load_split(spec, paths.RAW, train=True)
    fit_idx, val_idx = splits.split_indices(labels, params.data.val_size, params.seed, params.data.limit)
    rt = training.make_runtime(cfg)
    training.seed_everything(params.seed)
    options = models.options_from(cfg)
    model = models.build(cfg.model, spec.channels, spec.image_size, spec.num_classes, norm.mean, norm.std, options)
    click.echo(
        f"train: {cfg.model} on {spec.name}, {len(fit_idx)} fit / {len(val_idx)} val images, "
        f"{rt.device.type}, {rt.autocast_dtype or 'fp32'}, {torch.get_num_threads()} threads"
    )

    def on_epoch(r: training.EpochResult) -> None:
        tracking.log_epoch(r.epoch, r.metrics())
        click.echo(
            f"epoch {r.epoch}/{cfg.epochs}: train_loss {r.train_loss:.4f} train_acc {r.train_accuracy:.4f} "
            f"val_loss {r.val_loss:.4f} val_acc {r.val_accuracy:.4f} lr {r.lr:.2e} ({r.seconds:.1f}s)"
        )

    name = run_name(params)
    # evaluate.* are logged by the evaluate stage, which is the one that reads them.
    logged = {k: v for k, v in flatten(params).items() if not k.startswith("evaluate.")}
    fingerprint = checkpoints.fingerprint(
        {k: v for k, v in logged.items() if not k.startswith("mlflow.")}, [norm.mean, norm.std]
    )
    resume = checkpoints.load(fingerprint)
    if resume is not None:
        click.echo(f"resuming from the checkpoint after epoch {resume['epoch']} (MLflow run {resume['run_id']})")
    with tracking.train_run(
        params.mlflow.experiment_name, name, logged, resume["run_id"] if resume else None
    ) as run_id:
        data_digest = datasets.digest(images, labels)
        tracking.log_dataset(spec.name, data_digest, paths.RAW, {"fit": len(fit_idx), "validation": len(val_idx)})
        mlflow.set_tags({"dataset": spec.name, "dataset.digest": data_digest})
        mlflow.log_text(tracking.package_versions(), "environment/pip-freeze.txt")
        start = time.perf_counter()
        result = training.fit(
            model, images, labels, fit_idx, val_idx, cfg, rt, params.seed, on_epoch,
            augment_batches=params.data.augment,
            resume=resume,
            on_checkpoint=lambda state: checkpoints.save(state, fingerprint, run_id),
            progress=sys.stderr.isatty(),  # bars for people; plain epoch lines in CI logs
        )
        seconds = time.perf_counter() - start
        summary = {
            "best_val_accuracy": result.best.val_accuracy,
            "best_val_loss": result.best.val_loss,
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "mlflow_run_id": run_id,
        }
        # Timing goes to MLflow only: metrics files must be identical between identical runs.
        tracking.log_epoch(result.best_epoch, {"best_val_accuracy": result.best.val_accuracy, "train_seconds": seconds})
        model_uri = tracking.log_model(model, images[val_idx[:2]])
        if params.mlflow.register_model:
            version = tracking.register(model_uri, params.mlflow.register_model, params.mlflow.model_alias)
            click.echo(f"registered {params.mlflow.register_model} version {version} as @{params.mlflow.model_alias}")
        from pipeline import figures

        grid = figures.training_samples(images, labels, fit_idx, spec.class_names)
        atomic.write_bytes(paths.TRAIN_SAMPLES_PLOT, grid)
        mlflow.log_artifact(str(paths.TRAIN_SAMPLES_PLOT))

        models.save(
            paths.MODEL,
            model,
            {
                "architecture": cfg.model,
                "options": models.options_dict(options),
                "dataset": spec.name,
                "in_channels": spec.channels,
                "image_size": spec.image_size,
                "class_names": list(spec.class_names),
                "mean": list(norm.mean),
                "std": list(norm.std),
            },
        )
        tracking.write_run_file(paths.RUN_FILE, run_id, params.mlflow.experiment_name, name)
        atomic.write_json(paths.TRAIN_METRICS, summary)
        columns = [f.name for f in fields(training.EpochResult)]
        atomic.write_csv(paths.TRAIN_PLOT, columns, ([asdict(r)[c] for c in columns] for r in result.history))
    checkpoints.remove()
    click.echo(
        f"best val_accuracy {result.best.val_accuracy:.4f} at epoch {result.best_epoch} "
        f"({seconds:.1f}s); MLflow run {run_id} -> {paths.MODEL}"
    )


if __name__ == "__main__":
    main()
