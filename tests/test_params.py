"""Parameter validation: every bad value is named in one line; the README documents every key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import REPO
from pipeline.core import datasets, models, optim, params
from pipeline.core.errors import PipelineError


def test_committed_params_file_is_valid_and_complete() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    parsed = params.parse_params(raw)
    # Every key is spelled out in params.yaml, so `dvc exp run -S` and `dvc params diff` see them all.
    assert set(params.flatten(parsed)) == set(params.flatten(params.Params()))
    spelled_out = {f"{section}.{key}" for section, body in raw.items() if isinstance(body, dict) for key in body}
    spelled_out |= {key for key, body in raw.items() if not isinstance(body, dict)}
    assert spelled_out == set(params.flatten(parsed))


def test_readme_documents_every_parameter() -> None:
    readme = (REPO / "README.md").read_text()
    for key, default, allowed, _ in params.reference():
        assert f"`{key}`" in readme, key


def test_registries_match_the_names_params_accepts() -> None:
    assert tuple(datasets.DATASETS) == params.DATASETS
    assert tuple(models.ARCHITECTURES) == params.MODELS
    assert tuple(optim.OPTIMIZERS) == params.OPTIMIZERS
    assert tuple(optim.SCHEDULERS) == params.SCHEDULERS
    assert tuple(optim.LOSSES) == params.LOSSES


@pytest.mark.parametrize("key", ["optimizer", "scheduler", "loss"])
def test_factories_refuse_a_name_they_do_not_know(key: str) -> None:
    import dataclasses

    import torch

    # Only a parsed params file is validated; a hand-built TrainParams can carry any name.
    cfg = dataclasses.replace(params.TrainParams(), **{key: "lion"})
    model = torch.nn.Linear(2, 2)
    build = {
        "optimizer": lambda: optim.make_optimizer(model, cfg),
        "scheduler": lambda: optim.make_scheduler(torch.optim.SGD(model.parameters(), lr=0.1), cfg, 1),
        "loss": lambda: optim.make_loss(cfg),
    }[key]
    with pytest.raises(ValueError, match=f"train.{key}: no {key} named 'lion'"):
        build()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"data": {"dataset": "imagenet"}}, "data.dataset must be one of mnist, fashion_mnist, kmnist, cifar10, got 'imagenet'"),
        ({"train": {"model": "vit"}}, "train.model must be one of cnn, mlp, resnet, resnet18, got 'vit'"),
        ({"train": {"optimizer": "lion"}}, "train.optimizer must be one of adam, adamw, sgd, adadelta, rmsprop, got 'lion'"),
        ({"train": {"lr": 0}}, "train.lr must be a number > 0, got 0"),
        ({"train": {"lr": -0.1}}, "train.lr must be a number > 0, got -0.1"),
        ({"train": {"lr": "fast"}}, "train.lr must be a number > 0, got 'fast'"),
        ({"train": {"batch_size": 0}}, "train.batch_size must be an integer >= 1, got 0"),
        ({"train": {"batch_size": 12.5}}, "train.batch_size must be an integer >= 1, got 12.5"),
        ({"train": {"epochs": -1}}, "train.epochs must be an integer >= 1, got -1"),
        ({"train": {"epochs": True}}, "train.epochs must be an integer >= 1, got True"),
        ({"train": {"momentum": 1}}, "train.momentum must be a number >= 0 and < 1, got 1"),
        ({"train": {"lrr": 0.1}}, "unknown parameter 'train.lrr'"),
        ({"optimiser": "adam"}, "unknown parameter 'optimiser'"),
        ({"train": 3}, "train must be a mapping"),
        ({"data": {"val_size": None}}, "data.val_size must be an integer >= 1, got None"),
        ([1, 2], "the top level must be a mapping"),
    ],
)
def test_bad_values_name_the_parameter(raw: object, message: str) -> None:
    with pytest.raises(PipelineError) as err:
        params.parse_params(raw, source="params.yaml")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_null_and_defaults() -> None:
    p = params.parse_params({"data": {"limit": None}, "train": {"patience": None, "lr": 1}})
    assert p.data.limit is None and p.train.patience is None
    assert p.train.lr == 1.0 and isinstance(p.train.lr, float)
    assert p.train.model == "cnn"


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="missing.yaml: file not found"):
        params.load_params(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [0.1\n")
    with pytest.raises(PipelineError, match=r"broken.yaml: not valid YAML at line \d+"):
        params.load_params(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# only a comment\n")
    with pytest.raises(PipelineError, match="empty.yaml: empty; it must hold the parameters"):
        params.load_params(empty)  # not "all defaults": an emptied file is a mistake, not a choice
    assert params.load_params(_write(tmp_path / "partial.yaml", "train: {lr: 0.1}\n")).train.lr == 0.1


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
