"""The evaluate stage's warning about the test metrics: "chance level" only when balanced accuracy
is at 1/classes; classes the model never (or almost never) gets right named when the others are
learned."""

from __future__ import annotations

import pytest
import torch

from pipeline.core import metrics


def report(per_class: list[tuple[int, int]], names: list[str]) -> metrics.Report:
    """A real report of predictions: class i has per_class[i] = (test pictures, right ones); its
    wrong ones are predicted as the next class."""
    labels, predicted = [], []
    for i, (n, right) in enumerate(per_class):
        labels += [i] * n
        predicted += [i] * right + [(i + 1) % len(per_class)] * (n - right)
    logits = torch.nn.functional.one_hot(torch.tensor(predicted), len(per_class)).float() * 5
    return metrics.report(logits, torch.tensor(labels), names)


def test_one_collapsed_class_of_three_is_named_not_called_chance_level() -> None:
    # The reported run: two classes at 100 %, the largest at 0 %: accuracy 0.4848, balanced 0.667.
    rep = report([(17, 0), (8, 8), (8, 8)], ["cat", "dog", "bird"])
    assert rep.accuracy == pytest.approx(16 / 33) and rep.balanced_accuracy == pytest.approx(2 / 3)
    assert not rep.at_chance_level
    assert metrics.quality_warning(rep) == (
        "class 'cat' is never predicted right (0 of 17 test pictures, mostly taken for 'dog'); "
        "the others average 100 % (every mistake: plots/predictions.csv)"
    )


CASES = {
    # (test pictures, right) per class → what the warning starts with (None: no warning)
    "a model collapsed to one output": ([(10, 10), (10, 0), (10, 0)], "the model is at chance"),
    "a random guess on ten classes": ([(10, 1)] * 10, "the model is at chance"),
    "almost never, 1 of 40": ([(40, 1), (10, 9), (10, 10)], "class 'c0' is almost never"),
    "two classes never": ([(5, 0), (5, 0), (5, 5), (5, 5), (5, 5)], "classes 'c0' (0 of 5"),
    "every class learned": ([(10, 9), (10, 8), (30, 25)], None),
    "two classes, one never: collapsed": ([(30, 0), (10, 10)], "the model is at chance"),
    "many never, five named": ([(4, 0)] * 8 + [(4, 4)] * 10, "classes 'c0' (0 of 4"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_warning_says_what_the_metrics_show(case: str) -> None:
    per_class, start = CASES[case]
    names = [f"c{i}" for i in range(len(per_class))]
    warning = metrics.quality_warning(report(per_class, names))
    if start is None:
        assert warning is None
        return
    assert warning is not None and warning.startswith(start) and "\n" not in warning
    if start.startswith("the model"):
        assert report(per_class, names).at_chance_level
    else:
        assert "chance" not in warning
    if case == "many never, five named":
        assert (
            "'c4' (0 of 4" in warning
            and "'c5' (" not in warning
            and "and 3 more are never" in warning
        )
