"""The `evaluate` stage's work in-process: `evaluate(params, tracker)`, called by the stage and the
tests.

Everything but evaluate.* comes with the model (models/model.pt); the results go to the files DVC
tracks and into the train stage's run.
"""

from __future__ import annotations

import torch

from pipeline.core import atomic, datasets, figures, models, paths
from pipeline.core.errors import PipelineError
from pipeline.core.metrics import Report, curves, report
from pipeline.core.params import Params, flatten
from pipeline.core.tracking import Tracker
from pipeline.core.tracking.provenance import dvc_lock_tags, read_run_file


def logits_on_test_split(
    params: Params,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str], dict]:
    """(uint8 test images N×C×H×W, int64 labels, float32 logits N×classes, class names, model
    metadata) of models/model.pt; PipelineError when the model's outputs are not finite or
    evaluate.top_k does not fit."""
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    model, meta = models.load(paths.MODEL)
    names = list(meta["class_names"])
    if params.evaluate.top_k > len(names):
        raise PipelineError(
            f"evaluate.top_k: {params.evaluate.top_k} is more than the {len(names)} classes of the "
            "model"
        )
    spec = datasets.describe(meta["dataset"], paths.RAW)
    if (list(spec.class_names), spec.channels, spec.image_size) != (
        names,
        meta["in_channels"],
        meta["image_size"],
    ):
        raise PipelineError(
            f"{paths.RAW}: holds other pictures than {paths.MODEL} was trained on "
            f"({len(spec.class_names)} "
            f"classes, {spec.image_size} px); rerun the pipeline (dvc repro)"
        )
    images, labels = datasets.load_split(spec, paths.RAW, train=False)
    logits = models.logits(model, images)  # what the exported MLflow model computes
    if params.evaluate.tta:  # log of the mean softmax of each picture and its mirror image
        from pipeline.core.augment import with_mirror

        logits = with_mirror(model, images, logits)
    finite = torch.isfinite(logits).all(1)
    if not bool(finite.all()):
        raise PipelineError(
            f"{paths.MODEL}: the model's outputs are NaN or infinite for {int((~finite).sum())} of "
            f"{len(logits)} test "
            "images (its weights are not finite); retrain it with a lower train.lr (dvc repro -f "
            "train)"
        )
    return images, labels, logits, names, meta


def evaluate(params: Params, tracker: Tracker) -> tuple[Report, str]:
    """Evaluate models/model.pt on the test split; returns the report and the tracker's run id.

    With train.portable the kernels and thread count are those of training, so the metrics are as
    portable as the model. Raises PipelineError for a missing or unusable model, data or run file.
    """
    images, labels, logits, names, _ = logits_on_test_split(params)
    run_info = read_run_file(paths.RUN_FILE)
    rep = report(logits, labels, names, params.evaluate.top_k)
    roc, pr = curves(logits, labels, names)
    # Computed before the run is reopened, so that a background tracker opens the store meanwhile.
    with tracker.evaluate_run(run_info, flatten(params.evaluate, "evaluate.")) as run_id:
        # The figures first: a background tracker draws them (its longest task) while the files are
        # written.
        tracker.log_figure(
            "confusion_matrix.png", figures.confusion_matrix, rep.confusion.numpy(), names
        )
        tracker.log_figure("roc_precision_recall.png", figures.curves, roc, pr)
        # dvc.lock already holds this execution's data, stats and model hashes (DVC writes it per
        # stage).
        tracker.set_tags(
            {**dvc_lock_tags(), "model.at_chance_level": str(rep.at_chance_level).lower()}
        )
        tracker.log_metrics(rep.mlflow_metrics())
        tracker.log_table(
            {
                "class": names,
                "images": rep.confusion.sum(1).tolist(),
                "accuracy": list(rep.per_class_accuracy.values()),
            },
            "per_class_accuracy.json",
        )
        write_outputs(rep, images, labels, logits.argmax(1), names, roc, pr)
        for path in (paths.ROC_PLOT, paths.PRECISION_RECALL_PLOT, paths.TEST_SAMPLES_PLOT):
            tracker.log_file(path)
    return rep, run_id


def write_outputs(
    rep: Report,
    images: torch.Tensor,
    labels: torch.Tensor,
    predicted: torch.Tensor,
    names: list[str],
    roc: list[tuple[str, float, float]],
    pr: list[tuple[str, float, float]],
) -> None:
    """metrics/eval.json and the evaluate stage's plots, each replaced atomically."""
    atomic.write_json(paths.EVAL_METRICS, rep.metrics())
    atomic.write_csv(
        paths.CONFUSION_PLOT,
        ["actual", "predicted"],
        ((names[a], names[p]) for a, p in zip(labels.tolist(), predicted.tolist(), strict=False)),
    )
    atomic.write_csv(paths.PER_CLASS_PLOT, ["class", "accuracy"], rep.per_class_accuracy.items())
    atomic.write_csv(paths.ROC_PLOT, ["class", "fpr", "tpr"], roc)
    atomic.write_csv(paths.PRECISION_RECALL_PLOT, ["class", "recall", "precision"], pr)
    # The first test images plus the first mistakes, so the grid always shows some errors.
    wrong = (predicted != labels).nonzero().flatten()[:16]
    shown = torch.cat([torch.arange(min(16, len(labels))), wrong])
    grid = figures.image_grid(
        images[shown],
        [f"{names[int(predicted[i])]}/{names[int(labels[i])]}" for i in shown],
        [bool(predicted[i] != labels[i]) for i in shown],
        legend="caption: predicted/true class; red = mistake",
    )
    atomic.write_bytes(paths.TEST_SAMPLES_PLOT, grid)
