"""The weights stage refuses starting weights the network cannot take before it writes anything, in
the pictures' terms when only their channels differ; `runs:/<run id>` takes a run's one model, and a
name the run did not log is refused with the names it did. A real MLflow store whose runs log an
MNIST cnn's model.pt through this pipeline's own `log_pyfunc`; the real stage in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, assert_one_line_error, weights_stage

from pipeline.core import models, weights
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params, with_values
from pipeline.core.repo import clean_env

# Each run logs one model per name, in order: tracking.model.log_pyfunc as the train stage calls it.
LOG_RUNS = """
import json, sys, warnings
from pathlib import Path
import mlflow
from pipeline.core.tracking import model

root, names = Path(sys.argv[1]), json.loads(sys.argv[2])
mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
exp = mlflow.create_experiment("earlier", artifact_location=(root / "mlruns").as_uri())
meta = {"in_channels": 1, "image_size": 28, "class_names": [str(d) for d in range(10)],
        "dataset": "mnist"}
out = []
for run_names in names:
    with mlflow.start_run(experiment_id=exp) as run, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uris = [model.log_pyfunc(root / "model.pt", n, meta) for n in run_names]
    out.append({"run_id": run.info.run_id, "model_uris": uris})
print(json.dumps(out))
"""


def mnist_model_file(path: Path, architecture: str = "cnn") -> None:
    """An MNIST network's models/model.pt (1 channel, 28 px, 10 classes, default options), as
    train writes it."""
    options = models.options_from(Params().train)
    torch.manual_seed(0)
    net = models.build(architecture, 1, 28, 10, [0.13], [0.31], options)
    meta = {
        "architecture": architecture,
        "options": models.options_dict(options),
        "dataset": "mnist",
        "in_channels": 1,
        "image_size": 28,
        "class_names": [str(d) for d in range(10)],
        "mean": [0.13],
        "std": [0.31],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    models.save(path, net, meta)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict]]:
    """(MLFLOW_TRACKING_URI, the runs: one that logged one model, one that logged two, one that
    logged none)."""
    root = tmp_path_factory.mktemp("store")
    mnist_model_file(root / "model.pt")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            LOG_RUNS,
            str(root),
            json.dumps([["alpha-cnn"], ["b-1", "b-2"], []]),
        ],
        env=clean_env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        check=True,
    )
    return f"sqlite:///{root / 'mlflow.db'}", json.loads(proc.stdout.strip().splitlines()[-1])


def project(root: Path) -> Path:
    """A project root holding the MNIST model.pt as weights/mnist-cnn.pt and an earlier
    models/start.pt (its mtime set back an hour, so that a rewrite shows); returns that file."""
    mnist_model_file(root / "weights/mnist-cnn.pt")
    start = root / "models/start.pt"
    start.parent.mkdir()
    start.write_bytes(b"earlier")
    os.utime(start, ns=(start.stat().st_mtime_ns - 3600 * 10**9,) * 2)
    return start


FOLDER_28 = {"data.dataset": "folder", "data.image_size": 28, "train.model": "cnn"}


@pytest.mark.parametrize("source", ["file", "run"])
@pytest.mark.parametrize(
    ("values", "needles"),
    [
        (
            {},  # data.channels null: 3
            [
                "is a cnn for 1-channel pictures; these are 3-channel (data.channels): set "
                "data.channels: 1 or use weights for 3 channels",
            ],
        ),
        (
            {"data.channels": 1, "train.cnn_hidden": 64},
            ["holds 6.weight of shape [256, 800], cnn needs [64, 800]: weights of another arch"],
        ),
        ({"data.channels": 1, "train.model": "mlp"}, ["holds 0.weight, which mlp has not"]),
    ],
)
def test_weights_the_network_cannot_take_change_nothing(
    tmp_path: Path, store: tuple[str, list[dict]], source: str, values: dict, needles: list[str]
) -> None:
    uri, logged = store
    start = project(tmp_path)
    before = (start.read_bytes(), start.stat().st_mtime_ns)
    weights_value = "weights/mnist-cnn.pt" if source == "file" else f"runs:/{logged[0]['run_id']}"
    if source == "run" and values.get("train.model") == "mlp":
        needles = ["is a cnn, but train.model is mlp"]
    proc = weights_stage(
        tmp_path, FOLDER_28 | {"train.weights": weights_value} | values, MLFLOW_TRACKING_URI=uri
    )
    assert_one_line_error(proc, f"train.weights: {weights_value} ", *needles)
    assert (start.read_bytes(), start.stat().st_mtime_ns) == before

    # With the pictures' own channels and the network's own sizes, the same source is taken.
    proc = weights_stage(
        tmp_path,
        FOLDER_28 | {"train.weights": weights_value, "data.channels": 1},
        MLFLOW_TRACKING_URI=uri,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"cnn: {weights_value} (8 tensors" in proc.stdout
    assert start.read_bytes() != before[0]


@pytest.mark.parametrize(
    ("architecture", "values", "needle"),
    [
        (
            "cnn",
            {"data.dataset": "folder", "data.image_size": 28},
            "train.weights: weights/mnist.pt is a cnn for 1-channel pictures; these are 3-channel "
            "(data.channels): set data.channels: 1 or use weights for 3 channels",
        ),
        (
            "mlp",
            {"data.dataset": "folder", "data.image_size": 28},
            "train.weights: weights/mnist.pt is a mlp for 1-channel pictures; these are 3-channel "
            "(data.channels): set data.channels: 1 or use weights for 3 channels",
        ),
        (
            "cnn",
            {"data.dataset": "folder"},  # 64 px: the first dense layer differs too
            "train.weights: weights/mnist.pt is a cnn for 1-channel pictures; these are 3-channel "
            "(data.channels): set data.channels: 1 or use weights for 3 channels (with 1-channel "
            "pictures it still holds 6.weight of shape [256, 800], cnn needs [256, 6272]: weights "
            "of another architecture)",
        ),
        (
            "cnn",
            {"data.dataset": "cifar10"},
            "train.weights: weights/mnist.pt is a cnn for 1-channel pictures; these are 3-channel "
            "(data.dataset cifar10): use weights for 3 channels (with 1-channel pictures it still "
            "holds 6.weight of shape [256, 800], cnn needs [256, 1152]: weights of another "
            "architecture)",
        ),
        (
            "cnn",
            {"data.dataset": "folder", "data.image_size": 28, "data.channels": 1},
            None,  # taken
        ),
        (
            "cnn",
            {"data.dataset": "mnist", "train.cnn_hidden": 64},  # the pictures fit, a layer not
            "train.weights: weights/mnist.pt holds 6.weight of shape [256, 800], cnn needs "
            "[64, 800]: weights of another architecture",
        ),
        (
            "cnn",
            {"data.dataset": "folder", "data.image_size": 28, "train.cnn_stem": "pool"},
            "train.weights: weights/mnist.pt holds 0.weight of shape [24, 1, 5, 5], cnn needs "
            "[24, 3, 3, 3]: weights of another architecture",
        ),
    ],
)
def test_the_message_says_what_is_wrong_in_the_users_terms(
    tmp_path: Path, architecture: str, values: dict, needle: str | None
) -> None:
    """The weights stage's check (fetch, on the meta device) and train's last guard (load_into,
    on the network train builds) say the same."""
    file = tmp_path / "weights/mnist.pt"
    mnist_model_file(file, architecture)
    params = with_values(
        Params(), {"train.weights": "weights/mnist.pt", "train.model": architecture} | values, "p"
    )
    target = weights.Target.of(params)
    model = models.build(
        architecture, target.channels, target.side, 5, [0.5] * 3, [0.2] * 3, target.options
    )
    start = weights.Start("weights/mnist.pt", architecture, weights.bare(torch.load(file)))
    if needle is None:
        assert len(weights.fetch(params, tmp_path).state_dict) == len(start.state_dict)
        loaded = weights.load_into(model.net, start, target, list("abcde"))
        assert loaded == len(start.state_dict) - 2  # all but the head's weight and bias
        return
    with pytest.raises(PipelineError) as err:
        weights.fetch(params, tmp_path)
    assert str(err.value) == needle
    with pytest.raises(PipelineError) as guard:
        weights.load_into(model.net, start, target, list("abcde"))
    assert str(guard.value) == needle


# (train.weights from the store's runs, what the stage says: `from <run>` when it takes them, else
# its one error line), the runs' ids in place of {0}, {1}, {2}.
RUN_SOURCES = [
    (lambda runs: f"runs:/{runs[0]['run_id']}", "from {0}"),  # the run's one model
    (lambda runs: f"runs:/{runs[0]['run_id']}/alpha-cnn", "from {0}"),
    (lambda runs: runs[0]["model_uris"][0], "from {0}"),  # models/mlflow_run.json's model_uri
    (lambda runs: f"runs:/{runs[1]['run_id']}/b-2", "from {1}"),
    (
        lambda runs: f"runs:/{runs[0]['run_id']}/alpha",
        "run {0} logged no model named alpha; it logged alpha-cnn (runs:/{0} alone takes its one",
    ),
    (
        lambda runs: f"runs:/{runs[1]['run_id']}",
        "run {1} logged 2 models (b-1, b-2); name one: runs:/{1}/<name>",
    ),
    (
        lambda runs: f"runs:/{runs[1]['run_id']}/b-3",
        "run {1} logged no model named b-3; it logged b-1, b-2",
    ),
    (lambda runs: f"runs:/{runs[2]['run_id']}", "run {2} logged no model"),
    (lambda runs: "runs:/0123abcd/alpha-cnn", "no run 0123abcd in sqlite:///"),
]


@pytest.mark.parametrize(("source", "said"), RUN_SOURCES)
def test_a_run_is_named_by_its_id_and_a_name_it_did_not_log_lists_those_it_did(
    tmp_path: Path, store: tuple[str, list[dict]], source, said: str
) -> None:
    uri, logged = store
    start = project(tmp_path)
    before = (start.read_bytes(), start.stat().st_mtime_ns)
    value = source(logged)
    proc = weights_stage(
        tmp_path,
        {"data.dataset": "mnist", "train.model": "cnn", "train.weights": value},
        MLFLOW_TRACKING_URI=uri,
    )
    said = said.format(*(r["run_id"] for r in logged))
    if said.startswith("from "):
        assert proc.returncode == 0, proc.stderr
        assert (
            f"cnn: {value} (8 tensors, {said.replace('from ', 'from MLflow run ')})" in proc.stdout
        )
        cfg = with_values(Params(), {"train.weights": value}, "p").train
        started = weights.read(start, cfg)
        assert started is not None and started.source_run_id == said.removeprefix("from ")
        return
    assert_one_line_error(proc, f"train.weights: {value}", said)
    assert (start.read_bytes(), start.stat().st_mtime_ns) == before
