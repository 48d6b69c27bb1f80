"""Parameter validation: every bad value is named in one line; docs/parameters.md documents every
key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import REPO

from pipeline.core import datasets, models, optim, params
from pipeline.core.errors import PipelineError
from pipeline.core.validation import leaves


def test_committed_params_file_is_valid_and_complete() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    parsed = params.parse_params(raw)
    # Every key is spelled out in params.yaml, so `dvc exp run -S` and `dvc params diff` see them
    # all.
    assert set(params.flatten(parsed)) == set(params.flatten(params.Params()))
    spelled_out = {
        f"{section}.{key}"
        for section, body in raw.items()
        if isinstance(body, dict)
        for key in body
    }
    spelled_out |= {key for key, body in raw.items() if not isinstance(body, dict)}
    assert spelled_out == set(params.flatten(parsed))


def test_parameter_reference_page_is_generated_from_the_definitions() -> None:
    from pipeline_tools import params_reference

    assert (REPO / params_reference.PAGE).read_text() == params_reference.page(), (
        "docs/parameters.md is out of date: run `python -m pipeline params-reference`"
    )


# Parameter → the dict from each name it accepts to what implements it (the names are written in
# core.params, which must not import core.models or core.optim: see its docstring).
IMPLEMENTED = {
    "data.dataset": datasets.DATASETS,
    "train.model": models.ARCHITECTURES,
    "train.optimizer": optim.OPTIMIZERS,
    "train.scheduler": optim.SCHEDULERS,
    "train.loss": optim.LOSSES,
}


def unmatched(choices: tuple[str, ...], implemented: dict[str, object]) -> str:
    """What is wrong between a parameter's choices and the dict of their implementations ('' if
    nothing)."""
    accepted_only = [name for name in choices if name not in implemented]
    implemented_only = [name for name in implemented if name not in choices]
    return (f"accepted without an implementation: {accepted_only} " if accepted_only else "") + (
        f"implemented but not accepted: {implemented_only}" if implemented_only else ""
    )


def test_names_params_accepts_are_the_implemented_names() -> None:
    choices = {
        key: f.metadata["choices"] for key, f, _ in leaves(params.Params) if f.metadata["choices"]
    }
    for key, implemented in IMPLEMENTED.items():
        assert not unmatched(choices[key], implemented), (
            f"{key}: {unmatched(choices[key], implemented)}"
        )
        assert tuple(implemented) == choices[key], f"{key}: listed in another order"
        assert all(callable(f) or isinstance(f, datasets.DatasetSpec) for f in implemented.values())
    assert optim.PER_BATCH_SCHEDULERS.issubset(optim.SCHEDULERS)


@pytest.mark.parametrize(
    ("choices", "implemented", "wrong"),
    [
        (("adam", "sgd"), {"adam": print}, "accepted without an implementation: ['sgd']"),
        (("adam",), {"adam": print, "sgd": print}, "implemented but not accepted: ['sgd']"),
    ],
)
def test_a_name_on_one_side_only_is_reported(
    choices: tuple[str, ...], implemented: dict[str, object], wrong: str
) -> None:
    assert unmatched(choices, implemented).strip() == wrong


def test_the_edge_reads_parameters_without_torch() -> None:
    # A typo must be reported at once: reading and checking params.yaml (registries included) loads
    # no torch.
    import subprocess
    import sys

    # Nor the modules that implement the names it accepts: they are no DVC dependency of the
    # download and normalization-stats stages, so editing a network reruns neither.
    code = (
        "import sys; from pipeline.core import params; params.load_params('params.yaml'); "
        "print(sorted({'torch', 'pipeline.core.models', 'pipeline.core.optim', "
        "'pipeline.core.layers'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"data": {"dataset": "imagenet"}},
            "data.dataset must be one of mnist, fashion_mnist, kmnist, cifar10, folder, got "
            "'imagenet'",
        ),
        (
            {"train": {"model": "vit"}},
            "train.model must be one of cnn, mlp, resnet, resnet18, got 'vit'",
        ),
        (
            {"train": {"optimizer": "lion"}},
            "train.optimizer must be one of adam, adamw, sgd, adadelta, rmsprop, got 'lion'",
        ),
        ({"train": {"lr": 0}}, "train.lr must be a number > 0, got 0"),
        ({"train": {"lr": -0.1}}, "train.lr must be a number > 0, got -0.1"),
        ({"train": {"lr": "fast"}}, "train.lr must be a number > 0, got 'fast'"),
        ({"train": {"batch_size": 0}}, "train.batch_size must be an integer >= 1 or auto, got 0"),
        (
            {"train": {"batch_size": 12.5}},
            "train.batch_size must be an integer >= 1 or auto, got 12.5",
        ),
        ({"train": {"epochs": -1}}, "train.epochs must be an integer >= 1 or auto, got -1"),
        ({"train": {"epochs": True}}, "train.epochs must be an integer >= 1 or auto, got True"),
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
    with pytest.raises(PipelineError, match=r"missing.yaml: file not found"):
        params.load_params(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [0.1\n")
    with pytest.raises(PipelineError, match=r"broken.yaml: not valid YAML at line \d+"):
        params.load_params(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# only a comment\n")
    with pytest.raises(PipelineError, match=r"empty.yaml: empty; it must hold the parameters"):
        params.load_params(empty)  # not "all defaults": an emptied file is a mistake, not a choice
    assert (
        params.load_params(_write(tmp_path / "partial.yaml", "train: {lr: 0.1}\n")).train.lr == 0.1
    )


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
