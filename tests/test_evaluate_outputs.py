"""Everything the evaluate stage produces, for any number of classes: every metric, every figure,
every file and table, in-process from known logits; and a two-class folder through the whole chain
with the default parameters."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import create_project, run, runs, store
from PIL import Image

from pipeline.core import evaluator, metrics, paths
from pipeline.core.tracking import Tracker


class Drawing(Tracker):
    """A Tracker that keeps what it is given in memory and draws every figure as MLflow would (a
    PNG at the figure's own size and dpi): what an evaluation hands the tracking process."""

    def __init__(self) -> None:
        self.figures: dict[str, Image.Image] = {}
        self.ticks: dict[str, int] = {}
        self.metrics: dict[str, float] = {}
        self.tables: dict[str, dict[str, list[Any]]] = {}
        self.files: list[Path] = []

    @contextmanager
    def evaluate_run(self, run_info: Mapping[str, Any], params: Mapping[str, Any]) -> Iterator[str]:
        yield "run"

    def log_figure(self, artifact_file: str, draw: Callable[..., Any], *args: Any) -> None:
        import matplotlib.pyplot as plt

        fig = draw(*args)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        self.ticks[artifact_file] = max(
            len(ax.get_xticklabels()) + len(ax.get_yticklabels()) for ax in fig.axes
        )
        plt.close(fig)
        self.figures[artifact_file] = Image.open(buf)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.update(metrics)

    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        self.tables[artifact_file] = dict(columns)

    def log_file(self, path: Path) -> None:
        self.files.append(path)


def predictions(classes: int, n: int = 60, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(uint8 images n×1×8×8, labels n with every class present, logits n×classes that are right
    about half the time)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat(
        [torch.arange(classes), torch.randint(0, classes, (n - classes,), generator=g)]
    )
    logits = torch.randn(n, classes, generator=g) + 2 * torch.nn.functional.one_hot(labels, classes)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    return images, labels, logits


def test_roc_auc_of_two_classes_is_the_binary_auc() -> None:
    from sklearn.metrics import roc_auc_score

    logits, labels = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    probs = torch.softmax(logits.double(), 1)[:, 1].numpy()
    assert metrics._roc_auc(logits, labels, 2) == pytest.approx(roc_auc_score(labels, probs))


@pytest.mark.parametrize("classes", [2, 3, 10])
@pytest.mark.parametrize("top_k", [1, 2, 3, 5])
def test_every_output_of_evaluate_for_any_class_count(
    classes: int, top_k: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    names = [f"class {c}" for c in range(classes)]
    images, labels, logits = predictions(classes)
    rep = metrics.report(logits, labels, names, top_k)
    roc, pr = metrics.curves(logits, labels, names)
    pictures = [f"test/{i}" for i in range(len(labels))]
    table = metrics.predictions(logits, labels, names, pictures)
    tracker = Drawing()
    with tracker.evaluate_run({}, {}):
        evaluator.publish(tracker, rep, images, table, roc, pr)

    k = min(top_k, classes)  # capped at the number of classes, and named so
    scalars = rep.scalars()
    assert rep.top_k == k and f"top{k}_accuracy" in scalars
    assert all(math.isfinite(v) and v >= 0 for v in scalars.values()), scalars
    assert 0 <= scalars["roc_auc"] <= 1 and 0 <= scalars[f"top{k}_accuracy"] <= 1
    assert rep.confusion.shape == (classes, classes) and int(rep.confusion.sum()) == len(labels)
    assert {n for n, _, _ in roc} == {n for n, _, _ in pr} == set(names)
    assert tracker.metrics == rep.mlflow_metrics() and "test_roc_auc" in tracker.metrics
    for prefix in metrics.PER_CLASS.values():
        assert len([m for m in tracker.metrics if m.startswith(prefix)]) == classes, prefix
    assert set(tracker.figures) == {"confusion_matrix.png", "roc_precision_recall.png"}
    assert all(img.width > 100 and img.height > 100 for img in tracker.figures.values())

    evaluation = json.loads(paths.EVAL_METRICS.read_text())
    for family in metrics.PER_CLASS:
        assert list(evaluation[family]) == names, family
    assert_scikit_learn_agrees(evaluation, labels, logits.argmax(1), names)
    assert_predictions(table, tracker, labels, logits, names)
    for plot, header in (
        (paths.CONFUSION_PLOT, ["actual", "predicted"]),
        (paths.PER_CLASS_PLOT, ["class", "accuracy"]),
        (paths.ROC_PLOT, ["class", "fpr", "tpr"]),
        (paths.PRECISION_RECALL_PLOT, ["class", "recall", "precision"]),
        (paths.PREDICTIONS, list(table)),
    ):
        rows = list(csv.reader(plot.open()))
        assert rows[0] == header and len(rows) > 1, plot
    worst = evaluator.highest_loss(table["loss"], 16)
    assert min(table["loss"][i] for i in worst) >= sorted(table["loss"])[-16]
    assert [table["loss"][i] for i in worst] == sorted(table["loss"], reverse=True)[:16]
    with Image.open(paths.TEST_SAMPLES_PLOT) as grid:
        # 16 pictures of 8 px, enlarged 12 times, in 2 rows of 8 with 3 caption lines and a legend
        assert grid.size == (8 * (96 + 8), 16 + 2 * (96 + 14 + 24 + 4))
    assert set(tracker.files) >= {paths.ROC_PLOT, paths.TEST_SAMPLES_PLOT}

    # Reruns write the same bytes.
    first = {path: path.read_bytes() for path in Path().rglob("*.*")}
    evaluator.publish(Drawing(), rep, images, table, roc, pr)
    assert {path: path.read_bytes() for path in Path().rglob("*.*")} == first


def assert_scikit_learn_agrees(
    evaluation: dict[str, Any], labels: torch.Tensor, predicted: torch.Tensor, names: list[str]
) -> None:
    """Balanced accuracy and per-class precision, recall and F1 as scikit-learn computes them."""
    from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support

    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, labels=list(range(len(names))), zero_division=0
    )
    assert evaluation["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels, predicted)
    )
    assert list(evaluation["per_class_precision"].values()) == pytest.approx(precision)
    assert list(evaluation["per_class_accuracy"].values()) == pytest.approx(recall)
    assert list(evaluation["per_class_f1"].values()) == pytest.approx(f1)


def assert_predictions(
    table: dict[str, list[Any]],
    tracker: Drawing,
    labels: torch.Tensor,
    logits: torch.Tensor,
    names: list[str],
) -> None:
    """plots/predictions.csv and the run's table hold every picture's prediction; the run's
    confused pairs count the mistakes, most first."""
    rows = list(csv.DictReader(paths.PREDICTIONS.open()))
    assert len(rows) == len(labels) and tracker.tables["predictions.json"] == table
    probs = torch.softmax(logits.double(), 1)
    losses = torch.nn.functional.cross_entropy(logits.double(), labels, reduction="none")
    for i in (0, len(rows) // 2, len(rows) - 1):
        row, p = rows[i], int(logits[i].argmax())
        assert (row["picture"], row["true"], row["predicted"]) == (
            f"test/{i}",
            names[int(labels[i])],
            names[p],
        )
        assert float(row["probability"]) == pytest.approx(float(probs[i, p]), abs=1e-6)
        assert float(row["true_probability"]) == pytest.approx(float(probs[i, labels[i]]), abs=1e-6)
        assert float(row["loss"]) == pytest.approx(float(losses[i]), abs=1e-6)
    pairs = tracker.tables["confused_pairs.json"]
    counts = {}
    for r in rows:
        if r["true"] != r["predicted"]:
            counts[r["true"], r["predicted"]] = counts.get((r["true"], r["predicted"]), 0) + 1
    expected = sorted(
        counts.items(), key=lambda kv: (-kv[1], names.index(kv[0][0]), names.index(kv[0][1]))
    )[:20]
    assert list(zip(pairs["actual"], pairs["predicted"], pairs["count"], strict=True)) == [
        (a, p, n) for (a, p), n in expected
    ]


@pytest.mark.e2e
def test_a_two_class_folder_runs_the_whole_chain_with_default_evaluation(tmp_path: Path) -> None:
    root = create_project(
        tmp_path / "project",
        {"data": {"dataset": "folder", "folder": "data/images", "image_size": 16}},
    )
    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(["dark", "light"]):
        folder = root / "data/images" / name
        folder.mkdir(parents=True)
        for i in range(20):
            shade = 40 + 150 * c + int(torch.randint(0, 50, (1,), generator=g))
            Image.new("RGB", (16, 16), (shade, shade, shade)).save(folder / f"{i:02d}.png")
    proc = run(["dvc", "repro"], root)
    assert "most confused:" in proc.stdout or "test accuracy 1.0000" in proc.stdout, proc.stdout
    evaluation = json.loads((root / "metrics/eval.json").read_text())
    assert list(evaluation["per_class_accuracy"]) == ["dark", "light"]
    assert evaluation["top2_accuracy"] == 1.0 and 0 <= evaluation["roc_auc"] <= 1
    (only,) = runs(root)
    assert {"test_top2_accuracy", "test_roc_auc"} <= set(only.data.metrics)
    artifacts = {a.path for a in store(root).list_artifacts(only.info.run_id)}
    assert {
        "confusion_matrix.png",
        "roc_precision_recall.png",
        "predictions.json",
        "confused_pairs.json",
        "test_predictions.png",
    } <= artifacts
    # Every test picture by its path inside data.folder, as the download stage listed them.
    rows = list(csv.DictReader((root / "plots/predictions.csv").open()))
    listed = json.loads((root / "data/raw/folder/test/files.json").read_text())
    # About data.test_size of each class, by the hash of its path (core.splits).
    assert [r["picture"] for r in rows] == listed and 2 <= len(rows) <= 20
    assert all((root / "data/images" / r["picture"]).is_file() for r in rows)
    assert {r["true"] for r in rows} == {"dark", "light"}


def test_outputs_at_200_classes_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.core import figures

    monkeypatch.chdir(tmp_path)
    classes = 200
    names = [f"class {c:03d}" for c in range(classes)]
    images, labels, logits = predictions(classes, n=5 * classes)
    rep = metrics.report(logits, labels, names)
    roc, pr = metrics.curves(logits, labels, names)
    table = metrics.predictions(logits, labels, names, [f"test/{i}" for i in range(len(labels))])
    tracker = Drawing()
    evaluator.publish(tracker, rep, images, table, roc, pr)

    for name, figure in tracker.figures.items():
        assert figure.width <= 1500 and figure.height <= 1500, (name, figure.size)
    shown = figures.CONFUSION_SHOWN
    assert tracker.ticks["confusion_matrix.png"] <= 2 * shown
    # The classes of the most frequent mistakes, each shown with at least one of its mistakes.
    picked = figures.most_confused(rep.confusion.numpy()).tolist()
    assert shown - 1 <= len(picked) <= shown and picked == sorted(picked)
    (actual, predicted, _), *_ = rep.confused_pairs(1)
    assert {names.index(actual), names.index(predicted)} <= set(picked)
    sub = rep.confusion[picked][:, picked] - torch.diag(rep.confusion[picked, picked])
    assert bool(((sub.sum(0) + sub.sum(1)) > 0).all())
    # The full matrix stays as data: every test picture in the CSV, every non-zero cell in the run.
    assert len(paths.CONFUSION_PLOT.read_text().splitlines()) == 1 + len(labels)
    table = tracker.tables["confusion_matrix.json"]
    assert sum(table["count"]) == len(labels) and len(table["actual"]) == int(
        (rep.confusion > 0).sum()
    )
    per_class = list(csv.DictReader(paths.PER_CLASS_PLOT.open()))
    accuracies = [float(row["accuracy"]) for row in per_class]
    assert len(per_class) == metrics.PER_CLASS_SHOWN and accuracies == sorted(accuracies)
    assert min(accuracies) == min(rep.per_class_accuracy.values())
    assert max(accuracies) == max(rep.per_class_accuracy.values())
    assert len(tracker.tables["per_class_accuracy.json"]["class"]) == classes
    assert len(metrics.per_class_table(rep).splitlines()) == metrics.PER_CLASS_SHOWN + 3
    assert (
        len([m for m in tracker.metrics if m.startswith(metrics.CLASS_ACCURACY_PREFIX)]) == classes
    )


@pytest.mark.parametrize("family", list(metrics.PER_CLASS))
def test_per_class_mlflow_names_are_valid_and_distinct(family: str) -> None:
    names = ["T-shirt/top", "a+b", "a&b", "../up", "café crème"]
    labels = torch.arange(len(names))
    rep = metrics.report(torch.eye(len(names)), labels, names)
    prefix = metrics.PER_CLASS[family]
    logged = [m for m in rep.mlflow_metrics() if m.startswith(prefix)]
    assert logged == [
        f"{prefix}T-shirt/top",
        f"{prefix}a_b",
        f"{prefix}a_b_2",
        f"{prefix}.._up",
        f"{prefix}café crème",
    ]
    assert metrics.mlflow_name(f"{family}.T-shirt/top") == f"{prefix}T-shirt/top"


@pytest.mark.parametrize(
    ("most", "expected"),
    [(4, [2, 3, 7, 10]), (3, [3, 7]), (6, [2, 3, 7, 10, 20, 21]), (30, list(range(25)))],
)
def test_most_confused_classes_are_those_of_the_largest_mistakes(
    most: int, expected: list[int]
) -> None:
    from pipeline.core import figures

    confusion = torch.eye(25, dtype=torch.int64) * 5
    confusion[3, 7], confusion[10, 2], confusion[20, 21] = 4, 3, 1
    assert figures.most_confused(confusion.numpy(), most).tolist() == expected
    # Without a mistake, the first classes.
    assert figures.most_confused(torch.eye(25).numpy(), 4).tolist() == [0, 1, 2, 3]
