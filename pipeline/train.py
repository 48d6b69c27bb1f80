"""Stage `train`: fit the model, track the run in MLflow, write the model and training curves."""
from __future__ import annotations

import os
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
    import torch

    from pipeline import atomic, datasets, models, splits, stats, tracking, training

    cfg = params.train
    spec = datasets.get(params.data.dataset)
    norm = stats.load(paths.STATS, spec.name)
    images, labels = datasets.load_split(spec, paths.RAW, train=True)
    fit_idx, val_idx = splits.split_indices(labels, params.data.val_size, params.seed, params.data.limit)
    rt = training.make_runtime(cfg)
    torch.manual_seed(params.seed)
    model = models.build(cfg.model, spec.channels, spec.image_size, spec.num_classes, norm.mean, norm.std)
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
    with tracking.train_run(params.mlflow.experiment_name, name, flatten(params)) as run_id:
        start = time.perf_counter()
        result = training.fit(model, images, labels, fit_idx, val_idx, cfg, rt, params.seed, on_epoch)
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
        tracking.log_model(model, images[val_idx[:2]])

        models.save(
            paths.MODEL,
            model,
            {
                "architecture": cfg.model,
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
    click.echo(
        f"best val_accuracy {result.best.val_accuracy:.4f} at epoch {result.best_epoch} "
        f"({seconds:.1f}s); MLflow run {run_id} -> {paths.MODEL}"
    )


if __name__ == "__main__":
    main()
