"""Bad parameters: every one stops with one line naming the key or file, exit code 2, no traceback,
and nothing written or changed.

At three speeds, one contract: the whole table in-process through `load_params` (the code path
every stage starts with), one case through each stage command as dvc.yaml runs it, and through
`dvc repro` / `dvc exp run` against a finished project (where DVC would otherwise have deleted the
outputs before the command ran), with the combinations that only the data can refute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import (
    REPO,
    assert_one_line_error,
    assert_unchanged,
    finished_project,
    read_params,
    refused_in_one_line,
    run,
    snapshot,
    write_params,
    written,
)

from pipeline.core.errors import PipelineError
from pipeline.core.params import load_params, merge


@dataclass(frozen=True)
class Case:
    name: str
    needles: tuple[str, ...]  # each must be in the message
    params: dict = field(default_factory=dict)  # merged into the committed params.yaml
    text: bytes | None = None  # or params.yaml replaced by these bytes


def key_case(name: str, key: str, value: object, message: str | None = None) -> Case:
    """A case setting the dotted `key` to `value`; the error must name the key (and hold
    `message`, when given)."""
    *parents, leaf = key.split(".")
    nested: dict = {leaf: value}
    for part in reversed(parents):
        nested = {part: nested}
    return Case(name, (key, *([message] if message else [])), params=nested)


BOMB = "".join(
    f"{chr(97 + i)}: &{chr(97 + i)} "
    f"[{','.join([f'*{chr(96 + i)}'] * 9) if i else ','.join(['lol'] * 9)}]\n"
    for i in range(9)
).encode()

CASES = [
    # unknown names
    key_case(
        "unknown-dataset",
        "data.dataset",
        "imagenet",
        "data.dataset must be one of mnist, fashion_mnist, kmnist, cifar10, folder, got 'imagenet'",
    ),
    key_case(
        "unknown-model",
        "train.model",
        "vit",
        "train.model must be one of cnn, mlp, resnet, resnet18, alexnet, convnext_base, "
        "convnext_large, convnext_small… (83 names, listed in docs/parameters.md), got 'vit'",
    ),
    key_case(
        "unknown-optimizer",
        "train.optimizer",
        "lion",
        "train.optimizer must be one of adam, adamw, sgd, adadelta, rmsprop, got 'lion'",
    ),
    key_case("unknown-torchvision-model", "train.model", "resnet5000"),
    key_case("model-too-big-for-the-pictures", "train.model", "vit_b_16"),
    key_case("pretrained-renamed", "train.pretrained", True),
    key_case("imagenet-for-own-cnn", "train.weights", "imagenet"),
    key_case("unknown-scheduler", "train.scheduler", "warmup"),
    key_case("unknown-loss", "train.loss", "hinge"),
    key_case("unknown-precision", "train.precision", "fp16"),
    key_case("unknown-device", "train.device", "tpu"),
    Case(
        "unknown-key",
        ("unknown parameter 'train.learning_rate'",),
        {"train": {"learning_rate": 0.1}},
    ),
    Case("misspelt-key", ("unknown parameter 'train.lrr'",), params={"train": {"lrr": 0.1}}),
    Case("unknown-section", ("unknown parameter 'optimiser'",), params={"optimiser": "adam"}),
    # numbers out of range or of the wrong type
    key_case("negative-lr", "train.lr", -1),
    key_case("small-negative-lr", "train.lr", -0.1, "train.lr must be a number > 0, got -0.1"),
    key_case("zero-lr", "train.lr", 0, "train.lr must be a number > 0, got 0"),
    key_case("text-lr", "train.lr", "fast", "train.lr must be a number > 0, got 'fast'"),
    key_case("nan-min-delta", "train.min_delta", float("nan")),
    key_case(
        "zero-batch",
        "train.batch_size",
        0,
        "train.batch_size must be an integer >= 1 or auto, got 0",
    ),
    key_case(
        "fractional-batch",
        "train.batch_size",
        12.5,
        "train.batch_size must be an integer >= 1 or auto, got 12.5",
    ),
    key_case("zero-epochs", "train.epochs", 0),
    key_case(
        "negative-epochs",
        "train.epochs",
        -1,
        "train.epochs must be an integer >= 1 or auto, got -1",
    ),
    key_case(
        "boolean-epochs",
        "train.epochs",
        True,
        "train.epochs must be an integer >= 1 or auto, got True",
    ),
    key_case(
        "momentum-one", "train.momentum", 1, "train.momentum must be a number >= 0 and < 1, got 1"
    ),
    key_case("dropout-one", "train.dropout", 1),
    key_case("negative-label-smoothing", "train.label_smoothing", -0.1),
    key_case("negative-weight-decay", "train.weight_decay", -1),
    key_case("negative-threads", "train.threads", -1),
    key_case("zero-processes", "train.processes", 0),
    key_case("fractional-processes", "train.processes", 1.5),
    Case(
        "more-processes-than-batch",
        ("train.batch_size", "train.processes"),
        params={"train": {"processes": 8, "batch_size": 4}},
    ),
    Case(
        "more-processes-than-validation-images",
        ("data.val_size", "train.processes"),
        params={"data": {"val_size": 1}, "train": {"processes": 2}},
    ),
    key_case("zero-patience", "train.patience", 0),
    key_case("zero-grad-clip", "train.grad_clip", 0),
    key_case("gamma-one", "train.gamma", 1),
    key_case("zero-step-size", "train.step_size", 0),
    key_case("integer-nesterov", "train.nesterov", 1),
    key_case("text-augment", "data.augment", "yes"),
    key_case(
        "null-val-size",
        "data.val_size",
        None,
        "data.val_size must be an integer >= 1, got None",
    ),
    key_case("zero-limit", "data.limit", 0),
    key_case("empty-mirror", "data.mirror", ""),
    key_case("negative-seed", "seed", -1),
    key_case("seed-past-64-bits", "seed", 18446744073709551616),
    key_case("zero-top-k", "evaluate.top_k", 0),
    # sizes: lists, and layers no machine could hold
    key_case("empty-hidden-layers", "train.mlp_hidden", []),
    key_case("zero-hidden-layer", "train.mlp_hidden", [0]),
    key_case("billion-unit-layer", "train.mlp_hidden", [1000000000]),
    key_case("text-channels", "train.cnn_channels", "16"),
    # MLflow names MLflow would refuse only after training
    key_case("reserved-alias-latest", "mlflow.model_alias", "latest"),
    key_case("reserved-alias-version", "mlflow.model_alias", "v3"),
    key_case("alias-with-space", "mlflow.model_alias", "a b"),
    key_case("model-name-with-slash", "mlflow.register_model", "team/model"),
    key_case("empty-experiment-name", "mlflow.experiment_name", ""),
    # the file itself
    Case("section-not-a-mapping", ("train must be a mapping",), params={"train": 3}),
    Case("top-level-list", ("the top level must be a mapping",), text=b"- 1\n- 2\n"),
    Case("empty-file", ("params.yaml: empty",), text=b"# nothing here\n"),
    Case("yaml-syntax-error", ("not valid YAML at line",), text=b"train: {lr: 0.1\n"),
    Case("alias-bomb", ("aliases are not allowed",), text=BOMB),
    Case(
        "python-tag", ("not valid YAML",), text=b"seed: !!python/object/apply:os.system ['true']\n"
    ),
    Case("not-utf8", ("not UTF-8",), text=b"seed: 42\ndata: {dataset: \xff\xfe}\n"),
    Case(
        "oversized-file", ("larger than 1024 KiB",), text=b"# " + b"x" * (1 << 20) + b"\nseed: 1\n"
    ),
]


def test_the_table_covers_every_class() -> None:
    assert len(CASES) >= 58 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_parameter_is_one_line_naming_the_file_and_key(tmp_path: Path, case: Case) -> None:
    path = tmp_path / "params.yaml"
    if case.text is not None:
        path.write_bytes(case.text)
    else:
        write_params(path, merge(read_params(REPO / "params.yaml"), case.params))
    before = snapshot(tmp_path)
    with pytest.raises(PipelineError) as err:
        load_params(path)  # what every stage does first
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    for needle in case.needles:
        assert needle in message, message
    assert_unchanged(before, snapshot(tmp_path))


# ----------------------------------------------------------------------------------------------
# the stage commands


@pytest.mark.parametrize(
    ("stage", "params", "needle"),
    [
        ("download", {"data": {"dataset": "imagenet"}}, "data.dataset"),
        ("normalization_stats", {"data": {"val_size": None}}, "data.val_size"),
        ("train", {"train": {"learning_rate": 0.1}}, "train.learning_rate"),
        ("evaluate", {"evaluate": {"top_k": 0}}, "evaluate.top_k"),
    ],
)
def test_bad_parameter_is_named(tmp_path: Path, stage: str, params: dict, needle: str) -> None:
    # The stage command exactly as dvc.yaml runs it (the installed package, no path tricks).
    write_params(tmp_path / "params.yaml", params)
    proc = run(["python", "-m", f"pipeline.stages.{stage}"], tmp_path, check=False)
    assert_one_line_error(proc, "params.yaml", needle)
    assert written(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# against a finished project


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_project(tmp_path_factory.mktemp("param-errors") / "project")


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("command", "key"),
    [
        (["dvc", "exp", "run", "-S", "train.lr=-1"], "train.lr"),
        (["dvc", "exp", "run", "-S", "train.optimizer=lion"], "train.optimizer"),
        (["dvc", "exp", "run", "-S", "train.processes=0"], "train.processes"),
        (["dvc", "exp", "run", "-S", "mlflow.model_alias=latest"], "mlflow.model_alias"),
        (["dvc", "exp", "run", "-S", "evaluate.top_k=0"], "evaluate.top_k"),
        (["dvc", "exp", "run", "-S", "train.cnn_channels=[8,8,8,8,8,8]"], "train.cnn_channels"),
        (["dvc", "repro"], "train.lr"),  # after editing params.yaml by hand
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) else v,
)
def test_bad_parameter_through_dvc_deletes_nothing(
    project: Path, command: list[str], key: str
) -> None:
    params = project / "params.yaml"
    original = params.read_bytes()
    try:
        if command == ["dvc", "repro"]:
            edited, count = re.subn(r"(?m)^(  lr:) \S+$", r"\1 -1", original.decode())
            assert count == 1, "params.yaml has no train.lr line to edit"
            params.write_text(edited)
        before = snapshot(project)
        proc = run(command, project, check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "Traceback" not in output
        errors = [
            line for line in output.splitlines() if "error: " in line
        ]  # ours; DVC's say "ERROR: "
        assert len(errors) == 1 and key in errors[0], output
        after = snapshot(project)
        # DVC writes `-S` values into params.yaml before running the stages; everything else is as
        # it was.
        before.pop("params.yaml"), after.pop("params.yaml")
        assert_unchanged(before, after)
        changed = run(["git", "status", "--porcelain"], project).stdout.split()
        assert changed in ([], ["M", "params.yaml"]), changed
    finally:
        params.write_bytes(original)


TRAIN = ["python", "-m", "pipeline.stages.train"]


# Combinations each value of which is fine alone, refuted by the data's image size, its number of
# images or classes, or the memory a layer would take: checked by the stage that has the data.
@pytest.mark.e2e
@pytest.mark.parametrize(
    ("command", "needles", "params"),
    [
        pytest.param(
            TRAIN,
            ("train.cnn_channels", "blocks shrink 28px images"),
            {"train": {"cnn_channels": [8] * 6}},
            id="conv-blocks-shrink-images-to-nothing",
        ),
        pytest.param(
            TRAIN,
            ("train.cnn_channels", "GiB"),
            {"train": {"cnn_channels": [65536]}},
            id="conv-layer-beyond-memory",
        ),
        pytest.param(
            TRAIN,
            ("train.mlp_hidden", "GiB"),
            {"train": {"model": "mlp", "mlp_hidden": [1048576, 1048576]}},
            id="mlp-beyond-memory",
        ),
        pytest.param(
            ["python", "-m", "pipeline.stages.normalization_stats"],
            ("data.val_size",),
            {"data": {"val_size": 60000}},
            id="validation-larger-than-training",
        ),
    ],
)
def test_bad_combination_for_the_data(
    project: Path, command: list[str], needles: tuple[str, ...], params: dict
) -> None:
    refused_in_one_line(project, command, needles, params=params)
