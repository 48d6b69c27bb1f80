"""The `evaluate` stage's work in-process: `evaluate(params, tracker)`, called by the stage and the
tests: the test metrics, and the ONNX export checked on the same pictures.

Everything but evaluate.* comes with the model (models/model.pt); the results go to the files DVC
tracks and into the train stage's run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pipeline.core import atomic, datasets, figures, models, paths
from pipeline.core.errors import PipelineError
from pipeline.core.metrics import Report, curves, predictions, report, shown_classes
from pipeline.core.params import Params, flatten
from pipeline.core.tracking import Tracker
from pipeline.core.tracking.provenance import dvc_lock_tags, read_run_file

if TYPE_CHECKING:
    from pipeline.core.export import Parity
    from pipeline.core.layers import NormalizedModel


@dataclass(frozen=True)
class TestSplit:
    """models/model.pt and its answers on the test split."""

    model: NormalizedModel
    meta: dict[str, Any]  # the model file's metadata (class_names, image_size, dataset, ...)
    images: torch.Tensor  # uint8 N×C×H×W (a folder's: paged from disk)
    labels: torch.Tensor  # int64 N
    logits: torch.Tensor  # float32 N×classes in fp32: what the exported MLflow model computes


def logits_on_test_split(params: Params) -> TestSplit:
    """models/model.pt's logits on the test split, without test-time augmentation; PipelineError
    when the data do not fit the model or its outputs are not finite."""
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    model, meta = models.load(paths.MODEL)
    spec = datasets.describe(meta["dataset"], paths.RAW)
    datasets.check_model_fits(spec, paths.RAW, meta, paths.MODEL)
    images, labels = datasets.load_split(spec, paths.RAW, train=False)
    logits = models.logits(model, images)
    finite = torch.isfinite(logits).all(1)
    if not bool(finite.all()):
        raise PipelineError(
            f"{paths.MODEL}: the model's outputs are NaN or infinite for {int((~finite).sum())} of "
            f"{len(logits)} test "
            "images (its weights are not finite); retrain it with a lower train.lr (dvc repro -f "
            "train)"
        )
    return TestSplit(model, meta, images, labels, logits)


def test_pictures(dataset: str, count: int) -> list[str]:
    """The names of the `count` test pictures in row order: a folder's paths inside data.folder (the
    download stage's files.json), `test/<index>` for a built-in dataset. Raises PipelineError when
    the folder's list is missing or does not match the pictures."""
    spec = datasets.get(dataset)
    if not spec.from_folder:
        return [f"test/{i}" for i in range(count)]
    listing = paths.RAW / spec.folder / "test" / "files.json"
    try:
        names = json.loads(listing.read_text())
    except (OSError, ValueError):
        names = None
    if not isinstance(names, list) or len(names) != count:
        raise PipelineError(
            f"{listing}: no list of the {count} test pictures; rerun the download stage (dvc repro "
            "-f download)"
        )
    return [str(n) for n in names]


def evaluate(params: Params, tracker: Tracker) -> tuple[Report, Parity, str]:
    """Evaluate models/model.pt on the test split and export it as models/model.onnx, checked on
    the same pictures (core.export); returns the report, the export's parity and the tracker's run
    id.

    With train.portable the kernels and thread count are those of training, so the metrics are as
    portable as the model. Raises PipelineError, writing nothing, for a missing or unusable model,
    data or run file, or an ONNX model that answers otherwise.
    """
    from pipeline.core import export

    split = logits_on_test_split(params)
    names = list(split.meta["class_names"])
    pictures = test_pictures(split.meta["dataset"], len(split.labels))
    run_info = read_run_file(paths.RUN_FILE)
    reference = split.logits.numpy()
    parity, onnx_bytes = export.check(
        split.model, split.meta, split.images, reference, params.train.threads
    )
    logits = split.logits
    if params.evaluate.tta:  # log of the mean softmax of each picture and its mirror image
        from pipeline.core.augment import with_mirror

        logits = with_mirror(split.model, split.images, logits)
    rep = report(logits, split.labels, names, params.evaluate.top_k)
    roc, pr = curves(logits, split.labels, names)
    table = predictions(logits, split.labels, names, pictures)
    # Computed before the run is reopened, so that a background tracker opens the store meanwhile.
    with tracker.evaluate_run(run_info, flatten(params.evaluate, "evaluate.")) as run_id:
        publish(tracker, rep, split.images, table, roc, pr)
        export.record(parity, onnx_bytes, tracker)
    return rep, parity, run_id


def publish(
    tracker: Tracker,
    rep: Report,
    images: torch.Tensor,
    table: dict[str, list[Any]],
    roc: list[tuple[str, float, float]],
    pr: list[tuple[str, float, float]],
) -> None:
    """Every result of one evaluation into the open run of `tracker` and into the files DVC tracks
    (in the current folder): uint8 images N×C×H×W and their predictions (metrics.predictions)."""
    names = list(rep.per_class_accuracy)
    # The figures first: a background tracker draws them (its longest task) while the files are
    # written.
    tracker.log_figure(
        "confusion_matrix.png", figures.confusion_matrix, rep.confusion.numpy(), names
    )
    tracker.log_figure("roc_precision_recall.png", figures.curves, roc, pr)
    # dvc.lock already holds this execution's data, stats and model hashes (DVC writes it per
    # stage).
    tracker.set_tags({**dvc_lock_tags(), "model.at_chance_level": str(rep.at_chance_level).lower()})
    tracker.log_metrics(rep.mlflow_metrics())
    tracker.log_table(
        {
            "class": names,
            "images": rep.confusion.sum(1).tolist(),
            "accuracy": list(rep.per_class_accuracy.values()),
            "precision": list(rep.per_class_precision.values()),
            "f1": list(rep.per_class_f1.values()),
        },
        "per_class_accuracy.json",
    )
    # The whole matrix as data, whatever the figure shows: its non-zero cells.
    actual, predicted = rep.confusion.nonzero(as_tuple=True)
    tracker.log_table(
        {
            "actual": [names[i] for i in actual.tolist()],
            "predicted": [names[i] for i in predicted.tolist()],
            "count": rep.confusion[actual, predicted].tolist(),
        },
        "confusion_matrix.json",
    )
    pairs = rep.confused_pairs()
    tracker.log_table(
        {k: [p[i] for p in pairs] for i, k in enumerate(("actual", "predicted", "count"))},
        "confused_pairs.json",
    )
    tracker.log_table(table, "predictions.json")
    write_outputs(rep, images, table, roc, pr)
    for path in (paths.ROC_PLOT, paths.PRECISION_RECALL_PLOT, paths.TEST_SAMPLES_PLOT):
        tracker.log_file(path)


def write_outputs(
    rep: Report,
    images: torch.Tensor,
    table: dict[str, list[Any]],
    roc: list[tuple[str, float, float]],
    pr: list[tuple[str, float, float]],
) -> None:
    """metrics/eval.json and the evaluate stage's plots, each replaced atomically."""
    atomic.write_json(paths.EVAL_METRICS, rep.metrics())
    atomic.write_csv(
        paths.CONFUSION_PLOT,
        ["actual", "predicted"],
        zip(table["true"], table["predicted"], strict=True),
    )
    per_class = list(rep.per_class_accuracy.items())
    atomic.write_csv(
        paths.PER_CLASS_PLOT,
        ["class", "accuracy"],
        (per_class[i] for i in shown_classes(rep.per_class_accuracy)),
    )
    atomic.write_csv(paths.ROC_PLOT, ["class", "fpr", "tpr"], roc)
    atomic.write_csv(paths.PRECISION_RECALL_PLOT, ["class", "recall", "precision"], pr)
    atomic.write_csv(paths.PREDICTIONS, list(table), zip(*table.values(), strict=True))
    atomic.write_bytes(paths.TEST_SAMPLES_PLOT, worst_predictions(images, table))


def worst_predictions(images: torch.Tensor, table: dict[str, list[Any]], most: int = 16) -> bytes:
    """A PNG grid of the `most` test pictures with the highest loss (the model's worst mistakes),
    highest first (equal losses in picture order), each captioned with its file, true class and
    predicted class with its probability."""
    shown = highest_loss(table["loss"], most)
    picked = images[torch.tensor(shown)]
    size = int(picked.shape[-1])
    scale = max(2, 96 // size)  # small pictures enlarged to leave room for the captions
    return figures.image_grid(
        picked,
        [
            f"{table['picture'][i]}\ntrue: {table['true'][i]}\n"
            f"pred: {table['predicted'][i]} ({table['probability'][i]:.0%})"
            for i in shown
        ],
        [table["true"][i] != table["predicted"][i] for i in shown],
        scale=scale,
        width=(size * scale + 4) // 6,
        legend="highest-loss test pictures: file / true class / predicted (probability); "
        "red = mistake",
    )


def highest_loss(loss: list[float], most: int) -> list[int]:
    """Indices of the `most` highest losses, highest first (equal losses in picture order)."""
    return sorted(range(len(loss)), key=lambda i: (-loss[i], i))[:most]
