"""A misspelt parameter key or choice: the one-line error says what was probably meant first
("did you mean train.lr?"), ignoring case, without the list of every key or choice; a word close
to nothing keeps the list. The same in params.yaml, a preset and a sweep's search space."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO, assert_one_line_error, create_project, read_params, run, write_params

from pipeline.core.errors import PipelineError
from pipeline.core.params import load_params, merge

SUGGESTED = {
    # params.yaml values → the message after "params.yaml: "
    "train.lrr": (
        {"train": {"lrr": 0.01}},
        "unknown parameter 'train.lrr'; did you mean train.lr?",
    ),
    "train.LR": ({"train": {"LR": 0.01}}, "unknown parameter 'train.LR'; did you mean train.lr?"),
    "key in another section": (
        {"train": {"image_size": 32}},
        "unknown parameter 'train.image_size'; did you mean data.image_size?",
    ),
    "section misspelt": ({"trian": {}}, "unknown parameter 'trian'; did you mean train?"),
    "leaf without its section": (
        {"optimiser": "adam"},
        "unknown parameter 'optimiser'; did you mean train.optimizer?",
    ),
    "train.model=CNN": ({"train": {"model": "CNN"}}, "train.model: did you mean cnn? (got 'CNN')"),
    "long list": (
        {"train": {"model": "resnet5000"}},
        "train.model: did you mean resnet50 or resnet or resnet152? (got 'resnet5000')",
    ),
    "short list": (
        {"train": {"optimizer": "Adam"}},
        "train.optimizer: did you mean adam? (got 'Adam')",
    ),
    "dataset": ({"data": {"dataset": "MNIST"}}, "data.dataset: did you mean mnist? (got 'MNIST')"),
    # close to nothing: the list, as before
    "no close key": (
        {"train": {"xyz": 1}},
        "unknown parameter 'train.xyz' (known here: train.model, train.mlp_hidden",
    ),
    "no close choice": (
        {"train": {"optimizer": "lion"}},
        "train.optimizer must be one of adam, adamw, sgd, adadelta, rmsprop, got 'lion'",
    ),
}


@pytest.mark.parametrize("case", list(SUGGESTED))
def test_params_yaml_suggests_the_close_key_or_choice(tmp_path: Path, case: str) -> None:
    values, expected = SUGGESTED[case]
    path = tmp_path / "params.yaml"
    write_params(path, merge(read_params(REPO / "params.yaml"), values))
    with pytest.raises(PipelineError) as err:
        load_params(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: {expected}"), message
    if "did you mean" in expected:
        assert message == f"{path}: {expected}" and len(message) - len(str(path)) < 100


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_project(tmp_path_factory.mktemp("suggest") / "project")


@pytest.mark.parametrize(
    ("command", "file", "text", "needle"),
    [
        (
            ("preset", "bad.yaml"),
            "bad.yaml",
            "train:\n  lrr: 0.01\n",
            "bad.yaml: train.lrr is not a parameter; did you mean train.lr?",
        ),
        (
            ("preset", "bad.yaml"),
            "bad.yaml",
            "train:\n  model: CNN\n",
            "bad.yaml: train.model: did you mean cnn? (got 'CNN')",
        ),
    ],
)
def test_a_preset_suggests_too(
    project: Path, command: tuple[str, ...], file: str, text: str, needle: str
) -> None:
    (project / file).write_text(text)
    proc = run(["python", "-m", "pipeline", *command], project, check=False)
    assert_one_line_error(proc, needle)


def test_a_search_space_suggests_too(tmp_path: Path) -> None:
    from pipeline_team.sweep.space import load_space

    (tmp_path / "space.yaml").write_text("params:\n  train.lrr: {low: 0.001, high: 0.1}\n")
    with pytest.raises(PipelineError) as err:
        load_space(tmp_path / "space.yaml", load_params(REPO / "params.yaml"))
    assert str(err.value) == (
        f"{tmp_path / 'space.yaml'}: unknown parameter 'train.lrr'; did you mean train.lr?"
    )
