"""Stage `evaluate`: test-set metrics, DVC plots, and the test results in the train stage's MLflow run."""
from __future__ import annotations

from pathlib import Path

import click
import mlflow
import pandas as pd
import torch

from pipeline import atomic, datasets, evaluation, figures, models, paths, tracking, training
from pipeline.cli import reports_errors
from pipeline.params import TrainParams, flatten, load_params

BATCH_SIZE = 1000


@click.command()
@click.option("--params", "params_file", type=click.Path(path_type=Path), default=paths.PARAMS, show_default=True)
@reports_errors
def main(params_file: Path) -> None:
    """Evaluate models/model.pt on the test split; everything but evaluate.* comes with the model."""
    params = load_params(params_file)
    model, meta = models.load(paths.MODEL)
    spec = datasets.get(meta["dataset"])
    images, labels = datasets.load_split(spec, paths.RAW, train=False)
    # fp32 on the CPU, exactly what the exported MLflow model computes.
    rt = training.make_runtime(TrainParams(device="cpu", precision="fp32", channels_last=False))
    with tracking.evaluate_run(paths.RUN_FILE, flatten(params.evaluate, "evaluate.")) as run_id:
        logits = training.predict(model, images, BATCH_SIZE, rt)
        rep = evaluation.report(logits, labels, meta["class_names"], params.evaluate.top_k)
        names = meta["class_names"]
        predicted = logits.argmax(1)

        atomic.write_json(paths.EVAL_METRICS, rep.metrics())
        atomic.write_csv(
            paths.CONFUSION_PLOT, ["actual", "predicted"], ((names[a], names[p]) for a, p in zip(labels.tolist(), predicted.tolist()))
        )
        atomic.write_csv(paths.PER_CLASS_PLOT, ["class", "accuracy"], rep.per_class_accuracy.items())

        # dvc.lock already holds this execution's data, stats and model hashes (DVC writes it per stage).
        mlflow.set_tags(tracking.dvc_lock_tags())
        mlflow.log_metrics(
            {
                **{f"test_{name}": value for name, value in rep.scalars().items()},
                **{f"test_class_accuracy/{n}": a for n, a in rep.per_class_accuracy.items()},
            }
        )
        table = pd.DataFrame(
            {
                "class": names,
                "images": rep.confusion.sum(1).tolist(),
                "accuracy": list(rep.per_class_accuracy.values()),
            }
        )
        mlflow.log_table(table, artifact_file="per_class_accuracy.json")
        mlflow.log_figure(figures.confusion_matrix(rep.confusion, names), "confusion_matrix.png")
        # The first test images plus the first mistakes, so the grid always shows some errors.
        wrong = (predicted != labels).nonzero().flatten()[:16]
        shown = torch.cat([torch.arange(min(16, len(labels))), wrong])
        grid = figures.image_grid(
            images[shown],
            [f"{names[int(predicted[i])]}/{names[int(labels[i])]}" for i in shown],
            [bool(predicted[i] != labels[i]) for i in shown],
        )
        atomic.write_bytes(paths.TEST_SAMPLES_PLOT, grid)
        mlflow.log_artifact(str(paths.TEST_SAMPLES_PLOT))

    click.echo(evaluation.per_class_table(rep))
    click.echo(f"test accuracy {rep.accuracy:.4f}, loss {rep.loss:.4f}, macro F1 {rep.macro_f1:.4f}; MLflow run {run_id}")


if __name__ == "__main__":
    main()
