"""A sweep's Optuna study: its storage, its name (part of every trial's experiment name), and its
summary."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError, first_line
from pipeline.core.params import cli_value
from pipeline_team.sweep import trial
from pipeline_team.sweep.space import Dimension, SearchSpace

DEFAULT_STORAGE_FILE = "optuna.db"  # at the project root; git- and dvc-ignored
# The team's storage URL, e.g. what `python -m pipeline stack env` prints.
STORAGE_ENV = "PIPELINE_SWEEP_STORAGE"
SPACE_ATTR = "pipeline.space"  # study user attribute: the search space it was created with
EXP_ATTR, RUN_ATTR = "dvc_exp", "mlflow_run_id"  # trial user attributes
STUDY_NAME = re.compile(
    r"[A-Za-z][A-Za-z0-9_-]{0,63}"
)  # becomes part of experiment (git ref) names


def storage_url(url: str | None, root: Path) -> str:
    """The storage URL to use: the given one, else SQLite at the project root; a relative SQLite
    path is made absolute (trials run in other folders and must reach the same file)."""
    if not url:
        return f"sqlite:///{root / DEFAULT_STORAGE_FILE}"
    if url.startswith("sqlite:///") and not url.removeprefix("sqlite:///").startswith("/"):
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).resolve()}"
    return url


def open_study(
    url: str, name: str, space: SearchSpace, create: bool = True
) -> Any:  # -> optuna.Study
    """The study `name` in the storage (created when missing, with this space and pruner stored with
    it); one line when it exists with another space: its trials would not be comparable."""
    import optuna

    trial.quiet()
    check_study_name(name)
    storage = trial.storage(url)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction="maximize",
            pruner=trial.pruner(space.pruner),
            load_if_exists=create,
        )
    except Exception as exc:
        raise PipelineError(f"Optuna storage {trial.redact(url)}: {first_line(exc)}") from None
    wanted = json.loads(json.dumps(space.describe()))
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is None:
        study.set_user_attr(SPACE_ATTR, wanted)
        study.set_user_attr(trial.PRUNER_ATTR, space.pruner)
    elif stored != wanted:
        raise PipelineError(
            f"--study {name}: the study exists with another search space or pruner; "
            "use a new study name (or the space file it was created with)"
        )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise PipelineError(
            f"--study {name}: the study minimizes; a sweep maximizes validation accuracy"
        )
    return study


def check_study_name(name: str) -> None:
    """Study names become part of experiment names, hence of git refs."""
    if not STUDY_NAME.fullmatch(name):
        raise PipelineError(
            f"--study: {name!r} must start with a letter and hold only letters, digits, _ and - "
            "(at most 64)"
        )


def exp_name(study: str, number: int) -> str:
    """The DVC experiment name of a trial."""
    return f"{study}-{number}"


def summary(study: Any) -> list[str]:
    """Lines describing the study's outcome: counts by state and its best trial (parameters,
    experiment, run)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {
        s.name: sum(t.state == s for t in trials)
        for s in TrialState
        if any(t.state == s for t in trials)
    }
    lines = [
        f"study {study.study_name}: {len(trials)} trials ("
        + ", ".join(f"{n.lower()} {c}" for n, c in counts.items())
        + ")"
    ]
    if not counts.get("COMPLETE"):
        return [*lines, "no trial completed, so there is no best trial yet"]
    best = study.best_trial
    space = study.user_attrs.get(SPACE_ATTR, {}).get("params", {})
    dims = {k: Dimension(k, **v) if isinstance(v, dict) else None for k, v in space.items()}
    params = {k: (dims[k].value(v) if dims.get(k) else v) for k, v in best.params.items()}
    name = best.user_attrs.get(EXP_ATTR, "?")
    return [
        *lines,
        f"best trial {best.number}: val_accuracy {best.value:.4f}",
        *[f"  {k}: {cli_value(v)}" for k, v in params.items()],
        f"  experiment {name}: dvc exp apply {name}",
        f"  MLflow run {best.user_attrs.get(RUN_ATTR, '?')}",
    ]
