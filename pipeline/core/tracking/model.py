"""The trained model as an MLflow pyfunc model (see core.serving), logged from the run that trained
it."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any


def log_pyfunc(model_file: Path, name: str, meta: Mapping[str, Any]) -> str:
    """Log `model_file` (models/model.pt) into the active run as a pyfunc model named `name` (see
    core.serving), with this package as its code; returns its URI. torch is not imported here: a
    background tracker's process would pay for it.

    Named after the run (MLflow forbids `/:.%"'` in model names: `_` instead), so its model lists
    say which run each model came from. No input example: MLflow would load and run the model once
    more at logging time only to re-check what the tests check.
    """
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.pyfunc import log_model
    from mlflow.types import Schema, TensorSpec

    from pipeline.core import (
        serving,  # numpy and mlflow only: torch waits until a model is loaded
    )

    c, s = meta["in_channels"], meta["image_size"]
    signature = ModelSignature(
        inputs=Schema(
            [TensorSpec(np.dtype(object), (-1,))]
        ),  # untyped on purpose: see core.serving
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(meta["class_names"])))]),
    )
    with warnings.catch_warnings(), _without_mismatch_check():
        warnings.filterwarnings(
            "ignore", message=".*input example was not provided"
        )  # left out on purpose
        info = log_model(
            name=re.sub(r"[/:.%\"']", "_", name),
            python_model=serving.__file__,
            artifacts={"model": str(model_file)},
            code_paths=[str(Path(serving.__file__).parents[1])],
            signature=signature,
            metadata={
                "input": f"images (N, {c}, {s}, {s}), pixels as integers 0-255 or floats in [0, 1]",
                "output": "one row of logits per image, columns in class_names order",
                "class_names": list(meta["class_names"]),
                "dataset": meta["dataset"],
            },
            pip_requirements=[f"{d}=={version(d)}" for d in ("torch", "mlflow", "numpy", "PyYAML")],
        )
    return info.model_uri


def run_models(run_id: str, blame: str) -> list[tuple[str, str]]:
    """(name, model id) of every model MLflow run `run_id` logged, as MLflow lists them (not
    always in the order logged), from the project's store. Raises PipelineError naming `blame` for
    an unknown run, naming the store when it cannot be read."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline.core.errors import PipelineError, first_line
    from pipeline.core.tracking.store import check_reachable, tracking_uri

    store = tracking_uri()
    check_reachable(store)
    client = MlflowClient(store)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise PipelineError(f"{blame}: no run {run_id} in {store}") from None
    except (SQLAlchemyError, OSError) as exc:
        raise PipelineError(f"MLflow store {store}: {first_line(exc)}") from None
    outputs = run.outputs.model_outputs if run.outputs else []
    try:
        return [(client.get_logged_model(o.model_id).name, o.model_id) for o in outputs]
    except (MlflowException, SQLAlchemyError, OSError) as exc:
        raise PipelineError(f"MLflow store {store}: {first_line(exc)}") from None


def model_of_run(uri: str, blame: str) -> str:
    """`models:/<model id>` for `runs:/ID` (the one model run ID logged) or `runs:/ID/NAME` (its
    model named NAME, as MLflow names it after the run); any other URI as it is. MLflow itself
    only says "Failed to download artifacts from path 'MLmodel'" for a name the run has not:
    raises PipelineError naming `blame`, the run and the names it logged instead."""
    from pipeline.core.errors import PipelineError

    if not uri.startswith("runs:/"):
        return uri
    run_id, _, name = uri.removeprefix("runs:/").strip("/").partition("/")
    logged = run_models(run_id, f"{blame}: {uri}")
    names = ", ".join(sorted(n for n, _ in logged))
    if not logged:
        raise PipelineError(f"{blame}: {uri}: run {run_id} logged no model")
    if not name and len(logged) > 1:
        raise PipelineError(
            f"{blame}: {uri}: run {run_id} logged {len(logged)} models ({names}); name one: "
            f"runs:/{run_id}/<name>"
        )
    found = [i for n, i in logged if not name or n == name]
    if not found:
        raise PipelineError(
            f"{blame}: {uri}: run {run_id} logged no model named {name}; it logged {names}"
            + (f" (runs:/{run_id} alone takes its one model)" if len(logged) == 1 else "")
        )
    return f"models:/{found[-1]}"


@contextmanager
def download_logged(uri: str, blame: str) -> Iterator[tuple[str, Path]]:
    """(the id of the run that logged it, its model.pt downloaded) for a model this pipeline logged
    (`runs:/ID`, `runs:/ID/NAME`, `models:/NAME@ALIAS`, `models:/ID`) in the project's store, while
    inside: the download (and what MLflow fetches to find it) is removed on the way out. Raises
    PipelineError naming `blame` (a missing store is not created; see `model_of_run`)."""
    from pipeline.core.errors import PipelineError, first_line
    from pipeline.core.tracking.store import check_reachable, tracking_uri

    store = tracking_uri()
    database = Path(store.removeprefix("sqlite:///"))
    if store.startswith("sqlite:///") and not database.is_file():  # opening would create it
        raise PipelineError(f"{blame}: {uri}: no MLflow store at {database}")
    check_reachable(store)  # also quiets MLflow's progress bars (store.CLIENT_DEFAULTS)
    import mlflow
    from mlflow import MlflowException
    from mlflow.artifacts import download_artifacts
    from mlflow.models import get_model_info

    from pipeline.core.scratch import private_tmpdir

    mlflow.set_tracking_uri(store)
    # Both calls fetch into temporary folders of their own that MLflow leaves behind.
    with private_tmpdir("mlflow-download-"):
        try:
            model_uri = model_of_run(uri, blame)
            run_id = get_model_info(model_uri).run_id
            folder = Path(download_artifacts(artifact_uri=model_uri))
        except (MlflowException, OSError) as exc:
            raise PipelineError(f"{blame}: {uri}: {first_line(exc)}") from None
        found = sorted(folder.rglob("model.pt"))
        if not found:
            raise PipelineError(f"{blame}: {uri} is not a model this pipeline logged")
        yield run_id, found[0]


@contextmanager
def _without_mismatch_check() -> Iterator[None]:
    """MLflow's check that this environment satisfies the model's requirements, switched off for a
    `log_model` whose pins are read from this very environment (it cannot find a mismatch). It maps
    every installed distribution to its modules first: 1 s of each train run. MLflow has no switch
    for it, so its module-level function is swapped for the call and put back after."""
    from mlflow.utils import environment

    check = environment.warn_dependency_requirement_mismatches
    environment.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = check
