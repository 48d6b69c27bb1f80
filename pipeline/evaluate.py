"""Stage `evaluate`: test-set metrics, DVC plots, and the test results in the train stage's MLflow run."""
from __future__ import annotations

import click
import mlflow
import pandas as pd

from pipeline import atomic, datasets, evaluation, figures, models, paths, tracking, training
from pipeline.cli import reports_errors
from pipeline.params import TrainParams

BATCH_SIZE = 1000


@click.command()
@reports_errors
def main() -> None:
    """Evaluate models/model.pt on the test split (it reads no parameters: the model carries them)."""
    model, meta = models.load(paths.MODEL)
    spec = datasets.get(meta["dataset"])
    images, labels = datasets.load_split(spec, paths.RAW, train=False)
    # fp32 on the CPU, exactly what the exported MLflow model computes.
    rt = training.make_runtime(TrainParams(device="cpu", precision="fp32", channels_last=False))
    with tracking.evaluate_run(paths.RUN_FILE) as run_id:
        logits = training.predict(model, images, BATCH_SIZE, rt)
        rep = evaluation.report(logits, labels, meta["class_names"])
        names = meta["class_names"]
        predicted = logits.argmax(1)

        atomic.write_json(paths.EVAL_METRICS, rep.metrics())
        atomic.write_csv(
            paths.CONFUSION_PLOT, ["actual", "predicted"], ((names[a], names[p]) for a, p in zip(labels.tolist(), predicted.tolist()))
        )
        atomic.write_csv(paths.PER_CLASS_PLOT, ["class", "accuracy"], rep.per_class_accuracy.items())

        mlflow.log_metrics(
            {
                "test_accuracy": rep.accuracy,
                "test_loss": rep.loss,
                "test_macro_f1": rep.macro_f1,
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

    click.echo(evaluation.per_class_table(rep))
    click.echo(f"test accuracy {rep.accuracy:.4f}, loss {rep.loss:.4f}, macro F1 {rep.macro_f1:.4f}; MLflow run {run_id}")


if __name__ == "__main__":
    main()
