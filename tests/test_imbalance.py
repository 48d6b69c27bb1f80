"""Class imbalance: train.class_weights (the loss's per-class weights) and data.sampler (a
class-balanced draw per epoch), checked at the edge; the download stage's warning; a real run with
both remedies, twice, to the same bytes."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error, assert_unchanged, create_project, run, runs, snapshot
from PIL import Image
from sklearn.utils.class_weight import compute_class_weight

from pipeline.core import imbalance, loop, models, runtime
from pipeline.core.errors import PipelineError
from pipeline.core.optim import LOSSES, Optimization
from pipeline.core.params import TrainParams, parse_params


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        ({"train": {"class_weights": "inverse"}}, ("train.class_weights", "none, balanced")),
        ({"train": {"class_weights": {"cat": -1}}}, ("train.class_weights.cat", ">= 0")),
        ({"train": {"class_weights": {"cat": math.nan}}}, ("train.class_weights.cat", "nan")),
        ({"train": {"class_weights": {"cat": math.inf}}}, ("train.class_weights.cat", "inf")),
        ({"train": {"class_weights": {"cat": "heavy"}}}, ("train.class_weights.cat", "number")),
        ({"train": {"class_weights": {}}}, ("train.class_weights", "empty mapping")),
        ({"train": {"class_weights": [1, 2]}}, ("train.class_weights", "mapping")),
        ({"data": {"sampler": "weighted"}}, ("data.sampler", "shuffle, balanced")),
        ({"data": {"sampler": None}}, ("data.sampler",)),
    ],
)
def test_bad_settings_are_one_line_naming_the_parameter(raw: dict, needles: tuple) -> None:
    with pytest.raises(PipelineError) as exc:
        parse_params(raw)
    assert "\n" not in str(exc.value)
    for needle in needles:
        assert needle in str(exc.value), exc.value


def test_good_settings_parse_and_yaml_integer_keys_become_class_names() -> None:
    params = parse_params(
        {"train": {"class_weights": {3: 2, "cat": 0}}, "data": {"sampler": "balanced"}}
    )
    assert params.train.class_weights == {"3": 2.0, "cat": 0.0}
    assert params.data.sampler == "balanced"
    defaults = parse_params({})
    assert (defaults.train.class_weights, defaults.data.sampler) == ("none", "shuffle")


@pytest.mark.parametrize(
    ("setting", "needles"),
    [
        ({"seven": 2.0}, ("train.class_weights", "'seven'", "0, 1, 2")),
        ({"0": 0.0, "1": 0.0, "2": 0.0}, ("train.class_weights", "every class weighs 0")),
    ],
)
def test_names_are_checked_against_the_classes(setting: dict, needles: tuple) -> None:
    with pytest.raises(PipelineError) as exc:
        imbalance.check_names(setting, ["0", "1", "2"])
    for needle in needles:
        assert needle in str(exc.value), exc.value


def test_weights_are_scikit_learns_balanced_or_the_mapping() -> None:
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    balanced = imbalance.class_weights("balanced", ["a", "b", "c"], labels)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert torch.equal(balanced, torch.tensor(expected, dtype=torch.float32))
    assert balanced[2] / balanced[0] == pytest.approx(90)
    assert imbalance.class_weights({"c": 5.0}, ["a", "b", "c"], labels).tolist() == [1, 1, 5]
    assert imbalance.class_weights("none", ["a", "b", "c"], labels) is None
    with pytest.raises(PipelineError, match=r"train.class_weights: balanced .* 'c' has none"):
        imbalance.class_weights("balanced", ["a", "b", "c"], labels[:99])


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_nll_weights_and_smoothing_as_cross_entropy_does(smoothing: float) -> None:
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(32, 4, generator=gen), torch.randint(0, 4, (32,), generator=gen)
    weight = torch.tensor([0.5, 2.0, 1.0, 7.0])
    cfg = TrainParams(label_smoothing=smoothing)
    ce = LOSSES["cross_entropy"](cfg, weight)(logits, y)
    assert torch.allclose(LOSSES["nll"](cfg, weight)(logits, y), ce, atol=1e-6)
    # The weights do act: a heavier class's mistakes cost more than unweighted.
    assert not torch.allclose(ce, LOSSES["cross_entropy"](cfg, None)(logits, y))
    assert torch.equal(
        LOSSES["cross_entropy"](cfg, None)(logits, y),
        F.cross_entropy(logits, y, label_smoothing=smoothing),
    )


def test_balanced_draw_evens_the_classes_and_repeats_from_the_seed() -> None:
    labels = torch.tensor([0] * 900 + [1] * 100)
    weights = imbalance.sample_weights(labels)
    draws = [imbalance.epoch_order(1000, weights, torch.Generator().manual_seed(7)) for _ in "ab"]
    assert torch.equal(draws[0], draws[1])
    share = float((labels[draws[0]] == 1).double().mean())
    assert 0.4 < share < 0.6, share  # 0.1 in the data
    # WeightedRandomSampler's own draw from the same generator state.
    sampler = torch.utils.data.WeightedRandomSampler(
        weights, 1000, generator=torch.Generator().manual_seed(7)
    )
    assert list(sampler) == draws[0].tolist()
    # The default is the permutation the loop always drew.
    assert torch.equal(
        imbalance.epoch_order(1000, None, torch.Generator().manual_seed(7)),
        torch.randperm(1000, generator=torch.Generator().manual_seed(7)),
    )


def test_the_loop_trains_on_balanced_draws() -> None:
    """Two fits with the balanced sampler and weights end with the same weights; they differ from
    the shuffled fit's."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8, generator=gen)
    labels = torch.tensor([0] * 250 + [1] * 40 + [2] * 10)
    cfg = TrainParams(model="mlp", mlp_hidden=(16,), epochs=2, batch_size=32, precision="fp32")
    fit_idx, val = torch.arange(0, 300, 2), torch.arange(1, 300, 2)

    def fit(sampled: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        rt = runtime.make_runtime(cfg)
        model = rt.place(models.build("mlp", 1, 28, 3, [0.5], [0.5], models.options_from(cfg)))
        weights = imbalance.sample_weights(labels[fit_idx]) if sampled else None
        data = loop.TrainData.on(
            rt, images, labels, fit_idx, (images[val], labels[val]), sample_weights=weights
        )
        class_w = imbalance.class_weights("balanced", ["a", "b", "c"], labels[fit_idx].numpy())
        opt = Optimization.build(model, cfg, data.batches_per_epoch(32), class_w)
        loop.fit(model, data, opt, cfg, rt, loop.TrainState.start(0))
        return model.state_dict()

    first, second, shuffled = fit(True), fit(True), fit(False)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], shuffled[k]) for k in first)


def test_warning_names_both_classes_and_both_remedies() -> None:
    line = imbalance.imbalance_warning({"cat": 500, "dog": 50, "owl": 120})
    assert line is not None and "\n" not in line
    for needle in (
        "'cat'",
        "'dog'",
        "10×",
        "train.class_weights: balanced",
        "data.sampler: balanced",
    ):
        assert needle in line, line
    assert imbalance.imbalance_warning({"cat": 499, "dog": 50}) is None


def imbalanced_folder(root: Path, big: int = 40, small: int = 4) -> None:
    """data/images/{train,test}: class `big` with 40 noisy dark pictures, `small` with 4 (10×)
    noisy light ones, every picture different."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls, count, shade in (("big", big, 40), ("small", small, 160)):
            folder = root / "data/images" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(shade, shade + 90, (12, 12), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


FOLDER = {
    "data": {
        "dataset": "folder",
        "folder": "data/images",
        "image_size": 12,
        "channels": 1,
        "val_size": 8,
        "limit": None,
    },
    "train": {"model": "mlp", "mlp_hidden": [8], "epochs": 2, "batch_size": 8},
}


@pytest.mark.e2e
def test_both_remedies_run_to_the_same_bytes_and_are_logged(tmp_path: Path) -> None:
    root = create_project(
        tmp_path / "p",
        {
            **FOLDER,
            "train": {**FOLDER["train"], "class_weights": "balanced"},
            "data": {**FOLDER["data"], "sampler": "balanced"},
        },
    )
    imbalanced_folder(root)
    proc = run(["python", "-m", "pipeline", "download"], root)
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "'big'" in warning[0] and "'small'" in warning[0], proc.stderr
    assert "data.sampler: balanced" in warning[0]
    run(["python", "-m", "pipeline", "normalization-stats"], root)
    digests = []
    for _ in range(2):
        run(["python", "-m", "pipeline", "train"], root)
        digests.append(hashlib.sha256((root / "models/model.pt").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    logged = runs(root)[-1].data.params
    assert (logged["train.class_weights"], logged["data.sampler"]) == ("balanced", "balanced")

    # A class the data lacks: one line at the train stage, before training, nothing changed.
    params = (
        (root / "params.yaml")
        .read_text()
        .replace("class_weights: balanced", "class_weights: {big: 1.0, owl: 3.0}")
    )
    (root / "params.yaml").write_text(params)
    before = snapshot(root)
    proc = run(["python", "-m", "pipeline", "train"], root, check=False)
    assert_one_line_error(proc, "train.class_weights", "'owl'", "big, small")
    assert_unchanged(before, snapshot(root))
    assert json.loads((root / "metrics/train.json").read_text())["epochs_run"] == 2
