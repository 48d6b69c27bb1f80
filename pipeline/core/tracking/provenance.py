"""Where a run came from: git and DVC tags, the parameters that differ from the commit, the run
file, the packages."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.core import atomic, paths
from pipeline.core.errors import PipelineError
from pipeline.core.repo import git

RUN_FILE_VERSION = 1
# MLflow stores at most this many characters of a parameter value (and cuts longer ones with a
# warning).
PARAM_VALUE_LIMIT = 6000
TRUNCATED = " …[cut]"
PARAMS_ARTIFACT = (
    "params.yaml"  # every run's parameters, whole, as a file: what `reproduce` reads first
)


def origin_tags(params: Mapping[str, Any]) -> dict[str, str]:
    """Tags that tie a run to its code, its parameters and its DVC experiment.

    `git.commit` is the commit the code came from: for a DVC experiment its baseline (a queued one
    runs on a temporary commit of DVC's). `git.dirty` says whether the code differs from it; the
    parameters and the pipeline's outputs do not count, since DVC itself rewrites them during a
    plain run (dvc.lock, metrics, `-S` values). `params.changed` lists the parameters (of `params`)
    whose value differs from that commit's params.yaml.
    """
    tags: dict[str, str] = {}
    for env, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"),
    ):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    commit = os.environ.get("DVC_EXP_BASELINE_REV") or git("rev-parse", "HEAD", check=False)
    if not commit:
        return tags
    tags["mlflow.source.git.commit"] = tags["git.commit"] = commit
    not_code = [f":(exclude){p.as_posix()}" for p in paths.NOT_CODE]
    edited = git("diff", "--name-only", commit, "--", ".", *not_code, check=False)
    new = git("ls-files", "--others", "--exclude-standard", "--", "pipeline", check=False)
    tags["git.dirty"] = str(bool(edited or new)).lower()
    changed = changed_params(
        git("show", f"{commit}:{paths.PARAMS.as_posix()}", check=False), params
    )
    if changed:
        tags["params.changed"] = ", ".join(f"{k}={v}" for k, v in changed.items())[:5000]
    return tags


def changed_params(committed_yaml: str, params: Mapping[str, Any]) -> dict[str, str]:
    """The entries of `params` (dotted keys) whose value differs from those of the params.yaml text
    `committed_yaml` (compared once both are validated, so `lr: 1` and `lr: 1.0` are the same)."""
    from pipeline.core.params import flatten, parse_params
    from pipeline.core.yamlio import read_yaml

    try:
        committed = {
            k: param_value(v) for k, v in flatten(parse_params(read_yaml(committed_yaml))).items()
        }
    except PipelineError:
        committed = {}
    current = {k: param_value(v) for k, v in params.items()}
    return {k: v for k, v in current.items() if committed.get(k) != v}


def param_value(value: Any) -> str:
    """A parameter as MLflow should show it: YAML spelling for null, booleans and lists. A value
    longer than MLflow stores is cut with a note saying so (MLflow would cut it silently): the run's
    `params.yaml` artifact (PARAMS_ARTIFACT) holds every value whole."""
    text = (
        json.dumps(list(value) if isinstance(value, tuple) else value)
        if value is None or isinstance(value, (bool, tuple))
        else str(value)
    )
    if len(text) > PARAM_VALUE_LIMIT:
        note = (
            f"{TRUNCATED} ({len(text):,} characters; "
            f"the whole value is in the run's {PARAMS_ARTIFACT})"
        )
        text = text[: PARAM_VALUE_LIMIT - len(note)] + note
    return text


def write_run_file(
    path: Path, run_id: str, experiment_name: str, run_name: str, model_uri: str
) -> None:
    """Record the run id so that evaluate appends to the same run, and the logged model's URI (what
    `mlflow models serve -m` takes)."""
    atomic.write_json(
        path,
        {
            "version": RUN_FILE_VERSION,
            "run_id": run_id,
            "experiment_name": experiment_name,
            "run_name": run_name,
            "model_uri": model_uri,
        },
    )


def read_run_file(path: Path) -> dict[str, Any]:
    """Read models/mlflow_run.json."""
    path = Path(path)
    bad = f"{path}: not a run file written by the train stage; rerun train (dvc repro -f train)"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run the train stage first") from None
    except (ValueError, UnicodeDecodeError):
        raise PipelineError(bad) from None
    if not isinstance(info, dict) or not isinstance(info.get("run_id"), str):
        raise PipelineError(bad)
    if not isinstance(info.get("experiment_name"), str) or not info["experiment_name"].strip():
        raise PipelineError(f"{path}: no experiment name; rerun train (dvc repro -f train)")
    return info


def package_versions() -> str:
    """`pip freeze`-style list of the installed distributions (read from metadata, no subprocess).

    Only each METADATA file's Name and Version headers are read: parsing whole files as email
    messages (`Distribution.metadata`) took 0.4 s of every train run.
    """
    from importlib.metadata import distributions

    pins = set()
    for dist in distributions():
        headers = {}
        for line in (dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "").splitlines():
            if not line:  # the headers end at the first blank line
                break
            key, _, value = line.partition(":")
            headers.setdefault(key, value.strip())
        if headers.get("Name"):
            pins.add(f"{headers['Name']}=={headers.get('Version')}")
    return "\n".join(sorted(pins, key=str.lower)) + "\n"


def dvc_lock_tags(lock_file: Path = Path("dvc.lock")) -> dict[str, str]:
    """The content hashes DVC recorded for the data, the statistics and the model, as run tags."""
    from pipeline.core.yamlio import read_mapping

    try:
        stages = read_mapping(lock_file).get("stages")
    except PipelineError:  # missing or damaged: DVC rewrites it after the run; no tags
        return {}
    if not isinstance(stages, dict):
        return {}
    tags = {}
    for stage, out in (
        ("download", paths.RAW),
        ("normalization-stats", paths.STATS),
        ("train", paths.MODEL),
    ):
        recorded = stages.get(stage)
        outs = recorded.get("outs") if isinstance(recorded, dict) else None
        for entry in outs if isinstance(outs, list) else []:
            if isinstance(entry, dict) and entry.get("path") == out.as_posix() and entry.get("md5"):
                tags[f"dvc.lock.{out.as_posix()}"] = entry["md5"]
    return tags
