"""Test-set metrics from logits: accuracy, loss, macro F1, per-class accuracy, confusion matrix."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Report:
    accuracy: float
    loss: float
    macro_f1: float
    per_class_accuracy: dict[str, float]  # class name → recall of that class
    confusion: torch.Tensor  # [actual, predicted] counts

    def metrics(self) -> dict[str, object]:
        """The content of metrics/eval.json."""
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "macro_f1": self.macro_f1,
            "per_class_accuracy": self.per_class_accuracy,
        }


def report(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> Report:
    """All test metrics for one set of predictions."""
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
    return Report(
        accuracy=float(true_pos.sum() / len(labels)),
        loss=float(F.cross_entropy(logits.float(), labels)),
        macro_f1=float(f1.mean()),
        per_class_accuracy={name: float(r) for name, r in zip(class_names, recall)},
        confusion=confusion,
    )


def per_class_table(rep: Report) -> str:
    """A plain-text table of per-class accuracy with test counts, for the terminal."""
    width = max(5, *(len(n) for n in rep.per_class_accuracy))
    lines = [f"{'class':<{width}}  {'images':>6}  {'accuracy':>8}"]
    for i, (name, acc) in enumerate(rep.per_class_accuracy.items()):
        lines.append(f"{name:<{width}}  {int(rep.confusion[i].sum()):>6}  {acc:>8.4f}")
    lines.append(f"{'all':<{width}}  {int(rep.confusion.sum()):>6}  {rep.accuracy:>8.4f}")
    return "\n".join(lines)
