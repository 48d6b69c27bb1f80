"""Test-set metrics from logits (accuracy, loss, macro F1, balanced accuracy, per-class accuracy,
precision and F1, confusion, each picture's prediction) and their MLflow names.

The same values appear under two spellings: `metrics/eval.json` keys (`accuracy`,
`per_class_accuracy.<class>` once flattened) and MLflow metric names (`test_accuracy`,
`test_class_accuracy/<class>`, prefixed so they do not collide with the per-epoch curves).
`mlflow_name` is the one mapping between them.
"""

from __future__ import annotations

import posixpath
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

TEST_PREFIX = "test_"
CLASS_ACCURACY_PREFIX = "test_class_accuracy/"
# metrics/eval.json's per-class families → their MLflow prefixes (accuracy of a class = its recall).
PER_CLASS = {
    "per_class_accuracy": CLASS_ACCURACY_PREFIX,
    "per_class_precision": "test_class_precision/",
    "per_class_f1": "test_class_f1/",
}
CURVE_POINTS = 200  # per class and curve, in plots/roc.csv and plots/precision_recall.csv
# Classes in plots/per_class.csv and the stage's table: above it, the lowest and highest half each
# (every class stays in metrics/eval.json and the run's per-class table).
PER_CLASS_SHOWN = 30
# A class is "almost never predicted right" at this recall or below (1 of 20 test pictures).
NEVER_RIGHT = 0.05
# Classes a warning names; the rest are counted.
NAMED_AT_MOST = 5


def mlflow_name(key: str) -> str:
    """The MLflow metric name of a flattened metrics/eval.json key. A class name (a folder's, any
    Unicode) keeps the letters, digits, spaces and `_ - . : /` MLflow allows in names; anything else
    becomes `_`."""
    family, _, cls = key.partition(".")
    if family in PER_CLASS and cls:
        prefix = PER_CLASS[family]
        cleaned = re.sub(r"[^\w.\- :/]", "_", cls)
        # A slash is kept (Fashion-MNIST's "T-shirt/top") where it leaves a plain path, as MLflow
        # requires.
        name = prefix + cleaned
        return name if posixpath.normpath(name) == name else prefix + cleaned.replace("/", "_")
    return TEST_PREFIX + key


@dataclass(frozen=True)
class Report:
    accuracy: float
    loss: float
    macro_f1: float
    macro_precision: float
    macro_recall: float
    top_k: int  # evaluate.top_k capped at the number of classes: the k the accuracy was counted at
    top_k_accuracy: float
    roc_auc: float | None  # weighted one-vs-rest; None when a class is missing from the labels
    per_class_accuracy: dict[str, float]  # class name → recall of that class
    confusion: torch.Tensor  # [actual, predicted] counts
    balanced_accuracy: float  # mean recall over the classes with test pictures
    per_class_precision: dict[str, float]  # class name → precision (0 when never predicted)
    per_class_f1: dict[str, float]

    @property
    def at_chance_level(self) -> bool:
        """No better than guessing: balanced accuracy within a point of 1/classes (the classes with
        test pictures), what a diverged model, one collapsed to a single output or a random guess
        scores. Plain accuracy would call a model that gets every class right but the largest one
        "chance level" on an unbalanced test set."""
        present = int((self.confusion.sum(1) > 0).sum())
        return self.balanced_accuracy <= 1 / max(present, 1) + 0.01

    def never_right(self) -> list[int]:
        """Indices of the classes with test pictures whose recall is at most NEVER_RIGHT, in class
        order; empty unless some other class with test pictures is predicted right more often."""
        counts, right = self.confusion.sum(1), self.confusion.diag()
        present = [i for i in range(len(counts)) if counts[i] > 0]
        weak = [i for i in present if float(right[i]) <= NEVER_RIGHT * float(counts[i])]
        return weak if len(weak) < len(present) else []

    def scalars(self) -> dict[str, float]:
        """The scalar metrics under their file/MLflow names (without per-class values)."""
        out = {
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "loss": self.loss,
            "macro_f1": self.macro_f1,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            f"top{self.top_k}_accuracy": self.top_k_accuracy,
        }
        if self.roc_auc is not None:
            out["roc_auc"] = self.roc_auc
        return out

    def per_class(self) -> dict[str, dict[str, float]]:
        """Each per-class family of metrics/eval.json: {family: {class: value}}."""
        return {
            "per_class_accuracy": self.per_class_accuracy,
            "per_class_precision": self.per_class_precision,
            "per_class_f1": self.per_class_f1,
        }

    def metrics(self) -> dict[str, object]:
        """The content of metrics/eval.json."""
        return {**self.scalars(), **self.per_class()}

    def mlflow_metrics(self) -> dict[str, float]:
        """Every metric under its MLflow name (logged in one batch)."""
        out = {mlflow_name(k): v for k, v in self.scalars().items()}
        for family, values in self.per_class().items():
            out.update(_unique(family, values))
        return out

    def confused_pairs(self, most: int = 20) -> list[tuple[str, str, int]]:
        """(actual class, predicted class, pictures) of the `most` most frequent mistakes, most
        first (equal counts in class order)."""
        names = list(self.per_class_accuracy)
        off = self.confusion - torch.diag(self.confusion.diag())
        cells = off.flatten()
        order = sorted(
            (i for i in cells.nonzero().flatten().tolist()), key=lambda i: (-int(cells[i]), i)
        )
        k = len(names)
        return [(names[i // k], names[i % k], int(cells[i])) for i in order[:most]]


def _unique(family: str, per_class: dict[str, float]) -> dict[str, float]:
    """{MLflow name: value} of one per-class family, with a number appended to names two classes
    share once cleaned ("a+b" and "a&b": "a_b", "a_b_2")."""
    out: dict[str, float] = {}
    for cls, value in per_class.items():
        name, n = mlflow_name(f"{family}.{cls}"), 1
        while (candidate := name if n == 1 else f"{name}_{n}") in out:
            n += 1
        out[candidate] = value
    return out


def report(
    logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], top_k: int = 3
) -> Report:
    """All test metrics for one set of predictions: logits float N×classes, labels int64 N.

    `top_k` is capped at the number of classes (evaluate.top_k 3 on two classes counts top-2, named
    `top2_accuracy`): the defaults hold for any folder of two classes or more.
    """
    k = len(class_names)
    predicted = logits.argmax(1)
    confusion = torch.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
    true_pos = confusion.diag().double()
    actual = confusion.sum(1).double()
    called = confusion.sum(0).double()
    recall = torch.where(actual > 0, true_pos / actual, torch.zeros_like(true_pos))
    precision = torch.where(called > 0, true_pos / called, torch.zeros_like(true_pos))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom, torch.zeros_like(denom))
    k_eff = min(top_k, k)
    in_top_k = (logits.topk(k_eff, dim=1).indices == labels[:, None]).any(1)
    balanced, class_precision, class_f1 = _per_class(labels, predicted, k)
    return Report(
        accuracy=float(true_pos.sum() / len(labels)),
        loss=float(
            F.cross_entropy(logits.double(), labels)
        ),  # float64: huge finite logits stay finite
        macro_f1=float(f1.mean()),
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        top_k=k_eff,
        top_k_accuracy=float(in_top_k.double().mean()),
        roc_auc=_roc_auc(logits, labels, k),
        per_class_accuracy={name: float(r) for name, r in zip(class_names, recall, strict=False)},
        confusion=confusion,
        balanced_accuracy=balanced,
        per_class_precision=dict(zip(class_names, class_precision, strict=True)),
        per_class_f1=dict(zip(class_names, class_f1, strict=True)),
    )


def _per_class(
    labels: torch.Tensor, predicted: torch.Tensor, k: int
) -> tuple[float, list[float], list[float]]:
    """scikit-learn's balanced accuracy and per-class precision and F1 (0 where undefined) of int64
    labels and predictions (N each). The macro averages stay the ones computed above, unchanged
    since earlier runs (scikit-learn's differ in the last bit)."""
    from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support

    y, y_hat = labels.numpy(), predicted.numpy()
    precision, _, f1, _ = precision_recall_fscore_support(
        y, y_hat, labels=list(range(k)), zero_division=0
    )
    with warnings.catch_warnings():
        # A class predicted but absent from the labels is expected on small test sets.
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y, y_hat)
    return float(balanced), [float(v) for v in precision], [float(v) for v in f1]


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    """Softmax of the logits in float64 (rows sum to 1, as scikit-learn's multi-class AUC
    checks)."""
    return torch.softmax(logits.double(), dim=1).numpy()


def _roc_auc(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float | None:
    """One-vs-rest ROC AUC per class, averaged weighted by class size: scikit-learn's roc_auc_score
    with multi_class="ovr", average="weighted" (0.5 for constant scores). None when a class has no
    test image. Two classes: the binary AUC of the second class's probability (scikit-learn's binary
    case takes the positive class's score alone; both one-vs-rest AUCs equal it)."""
    from sklearn.metrics import roc_auc_score

    if len(torch.unique(labels)) < k:
        return None  # one-vs-rest AUC is undefined for a class with no positives
    if k == 2:
        return float(roc_auc_score(labels.numpy(), _probabilities(logits)[:, 1]))
    return float(
        roc_auc_score(
            labels.numpy(),
            _probabilities(logits),
            multi_class="ovr",
            average="weighted",
            labels=list(range(k)),
        )
    )


def curves(
    logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]
) -> tuple[list[tuple[str, float, float]], list[tuple[str, float, float]]]:
    """One-vs-rest curves per class: ROC points (class, fpr, tpr) and precision-recall points
    (class, recall, precision), from scikit-learn's roc_curve and precision_recall_curve (both
    drop_intermediate=True: only where a curve turns), thinned to CURVE_POINTS. Ties and constant
    scores give the curves scikit-learn defines for them; a class without positives or without
    negatives among the labels has no curve."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    probs = _probabilities(logits)
    y = labels.numpy()
    roc: list[tuple[str, float, float]] = []
    pr: list[tuple[str, float, float]] = []
    for c, name in enumerate(class_names):
        positive = y == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, c], drop_intermediate=True)
        roc += [(name, x, t) for x, t in _thin(fpr, tpr)]
        precision, recall, _ = precision_recall_curve(positive, probs[:, c], drop_intermediate=True)
        # scikit-learn lists precision-recall from high recall to low; charts and CSV go left to
        # right.
        pr += [(name, r, p) for r, p in _thin(recall[::-1], precision[::-1])]
    return roc, pr


def _thin(xs: np.ndarray, ys: np.ndarray, most: int = CURVE_POINTS) -> list[tuple[float, float]]:
    """At most `most` points, evenly spaced along the curve, both ends kept, rounded to 5 digits: a
    weak model's curve turns at thousands of thresholds, more than a chart shows or git should
    hold."""
    keep = np.unique(np.linspace(0, len(xs) - 1, min(most, len(xs))).round().astype(int))
    return [(round(float(xs[i]), 5), round(float(ys[i]), 5)) for i in keep]


def shown_classes(per_class: dict[str, float], most: int = PER_CLASS_SHOWN) -> list[int]:
    """Indices of the classes a per-class chart or table shows: all of them in class order when
    there are at most `most`, else the `most`/2 lowest and highest values, lowest first (ties in
    class order)."""
    values = list(per_class.values())
    if len(values) <= most:
        return list(range(len(values)))
    ranked = sorted(range(len(values)), key=lambda i: (values[i], i))
    return ranked[: most // 2] + ranked[-(most - most // 2) :]


def per_class_table(rep: Report) -> str:
    """A plain-text table of per-class accuracy with test counts, for the terminal (above
    PER_CLASS_SHOWN classes, the lowest and highest; the rest are counted)."""
    names = list(rep.per_class_accuracy)
    shown = shown_classes(rep.per_class_accuracy)
    width = max(5, *(len(names[i]) for i in shown))
    lines = [f"{'class':<{width}}  {'images':>6}  {'accuracy':>8}"]
    for n, i in enumerate(shown):
        if n == PER_CLASS_SHOWN // 2 and len(shown) < len(names):
            lines.append(f"... {len(names) - len(shown)} more classes in metrics/eval.json")
        acc = rep.per_class_accuracy[names[i]]
        lines.append(f"{names[i]:<{width}}  {int(rep.confusion[i].sum()):>6}  {acc:>8.4f}")
    lines.append(f"{'all':<{width}}  {int(rep.confusion.sum()):>6}  {rep.accuracy:>8.4f}")
    return "\n".join(lines)


def quality_warning(rep: Report) -> str | None:
    """One line (without "warning: ") when the test metrics show a model that learned nothing
    (balanced accuracy at 1/classes) or one that learned all classes but a few, naming those
    classes with their right/test counts and the class each is mostly taken for; None otherwise."""
    k = int((rep.confusion.sum(1) > 0).sum())
    if rep.at_chance_level:
        return (
            f"the model is at chance level (balanced accuracy {rep.balanced_accuracy:.4f}, "
            f"1/{k} classes = {1 / max(k, 1):.4f}; test accuracy {rep.accuracy:.4f}): it learned "
            "nothing usable; look at its training curves and try a lower train.lr"
        )
    weak = rep.never_right()
    if not weak:
        return None
    names = list(rep.per_class_accuracy)
    counts, right = rep.confusion.sum(1), rep.confusion.diag()
    others = [float(right[i] / counts[i]) for i in range(len(names)) if counts[i] and i not in weak]
    parts = []
    for i in weak[:NAMED_AT_MOST]:
        row = rep.confusion[i].clone()
        row[i] = -1  # the class it is mostly taken for is another one
        parts.append((names[i], f"{int(right[i])} of {int(counts[i])}", names[int(row.argmax())]))
    almost = "" if all(int(right[i]) == 0 for i in weak) else "almost "
    if len(weak) == 1:
        ((name, score, taken_for),) = parts
        said = (
            f"class '{name}' is {almost}never predicted right ({score} test pictures, mostly "
            f"taken for '{taken_for}')"
        )
    else:
        named = ", ".join(f"'{n}' ({score}, mostly taken for '{t}')" for n, score, t in parts)
        more = f" and {len(weak) - NAMED_AT_MOST} more" if len(weak) > NAMED_AT_MOST else ""
        said = f"classes {named}{more} are {almost}never predicted right"
    return (
        f"{said}; the others average {100 * sum(others) / len(others):.0f} % (every mistake: "
        "plots/predictions.csv)"
    )


def predictions(
    logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], pictures: Sequence[str]
) -> dict[str, list[Any]]:
    """Each test picture's prediction as columns of N rows: picture (its name, `pictures`), true
    class, predicted class, the predicted class's probability, the true class's probability, and
    the picture's cross-entropy loss (nats, without label smoothing), numbers rounded to 6 decimals
    so that the table is small and reruns write the same bytes."""
    probs = torch.softmax(logits.double(), dim=1)
    predicted = logits.argmax(1)
    loss = F.cross_entropy(logits.double(), labels, reduction="none")
    return {
        "picture": list(pictures),
        "true": [class_names[i] for i in labels.tolist()],
        "predicted": [class_names[i] for i in predicted.tolist()],
        "probability": [round(v, 6) for v in probs.gather(1, predicted[:, None])[:, 0].tolist()],
        "true_probability": [round(v, 6) for v in probs.gather(1, labels[:, None])[:, 0].tolist()],
        "loss": [round(v, 6) for v in loss.tolist()],
    }
