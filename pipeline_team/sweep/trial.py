"""A train run that is one trial of an Optuna sweep: which trial (from the environment), its pruner,
its reports, and the per-epoch hook that links the train stage to them.

`python -m pipeline sweep` starts each trial as a DVC experiment with the variables of `TRIAL_ENV`
set and `PIPELINE_TRAIN_HOOK` naming this module (pipeline.core.hooks); the train stage then calls
`train_hook()`, and the hook reports every epoch's validation accuracy to the study and stops the
run when the study's pruner says so. Optuna is imported only when a trial runs: a plain `dvc repro`
never imports this module. The pruner is stored with the study (its `pipeline.pruner` attribute),
so every worker and every trial of one study prune alike, whatever machine they run on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.core import hooks
from pipeline.core.errors import PipelineError, first_line

if TYPE_CHECKING:
    from pipeline.core.loop import EpochResult

# The sweep sets these for the experiments it starts; nothing else should.
STORAGE_ENV, STUDY_ENV, NUMBER_ENV = (
    "PIPELINE_TRIAL_STORAGE",
    "PIPELINE_TRIAL_STUDY",
    "PIPELINE_TRIAL_NUMBER",
)
TRIAL_ENV = (STORAGE_ENV, STUDY_ENV, NUMBER_ENV)
PRUNER_ATTR = "pipeline.pruner"  # study user attribute: the pruner spec of the search-space file
# MLflow tags that tie a run to its trial (the storage URL is left out: it may hold a password).
STUDY_TAG, TRIAL_TAG, PRUNED_TAG = "optuna.study", "optuna.trial", "optuna.pruned"
# Pruners by name, with the keyword arguments each accepts (the space file is checked against this).
PRUNERS: dict[str, tuple[str, ...]] = {
    "none": (),
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "percentile": (
        "percentile",
        "n_startup_trials",
        "n_warmup_steps",
        "interval_steps",
        "n_min_trials",
    ),
    "threshold": ("lower", "upper", "n_warmup_steps", "interval_steps"),
}
SQLITE_TIMEOUT_S = (
    60  # several workers and their trials write one SQLite file; wait rather than fail
)


@dataclass(frozen=True)
class TrialLink:
    """Which trial of which study a train run is."""

    storage: str
    study: str
    number: int

    def env(self) -> dict[str, str]:
        """The environment variables that make a train stage this trial (and load its hook)."""
        return {
            hooks.HOOK_ENV: __name__,
            STORAGE_ENV: self.storage,
            STUDY_ENV: self.study,
            NUMBER_ENV: str(self.number),
        }

    def tags(self) -> dict[str, str]:
        """MLflow tags naming the study and the trial."""
        return {STUDY_TAG: self.study, TRIAL_TAG: str(self.number)}


def link_from_env(environ: Mapping[str, str] | None = None) -> TrialLink | None:
    """The trial this process runs, or None for an ordinary run (none of the variables set)."""
    environ = os.environ if environ is None else environ
    values = [environ.get(name, "") for name in TRIAL_ENV]
    if not any(values):
        return None
    missing = [name for name, value in zip(TRIAL_ENV, values, strict=False) if not value]
    if missing:
        raise PipelineError(
            f"{', '.join(missing)} not set: a sweep trial needs all of {', '.join(TRIAL_ENV)}"
        )
    try:
        number = int(values[2])
    except ValueError:
        raise PipelineError(f"{NUMBER_ENV} must be a trial number, got {values[2]!r}") from None
    return TrialLink(values[0], values[1], number)


def storage(url: str) -> Any:  # -> optuna.storages.RDBStorage
    """Optuna's RDB storage at `url` (SQLite waits for locks; heartbeats let workers fail dead
    trials)."""
    import optuna

    quiet()
    kwargs: dict[str, Any] = {"heartbeat_interval": 30, "grace_period": 120}
    if url.startswith("sqlite:"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except (
        Exception
    ) as exc:  # SQLAlchemy's errors for bad URLs, missing drivers, refused connections
        raise PipelineError(f"Optuna storage {redact(url)}: {first_line(exc)}") from None


def quiet() -> None:
    """Optuna's INFO lines and its warnings about what the sweep does on purpose: heartbeats (marked
    experimental) recorded by the worker itself around ask/tell, which Optuna expects only from
    optimize()."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings(
        "ignore", message="Heartbeat of storage is supposed to be used with Study.optimize"
    )


def pruner(spec: Mapping[str, Any]) -> Any:  # -> optuna.pruners.BasePruner
    """The Optuna pruner a spec ({"type": name, **arguments}) describes."""
    import optuna

    kind = spec.get("type", "none")
    args = {k: v for k, v in spec.items() if k != "type"}
    classes = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "threshold": optuna.pruners.ThresholdPruner,
    }
    return classes[kind](**args)


def redact(url: str) -> str:
    """A storage URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        auth, _, host = rest.rpartition("@")
        return f"{scheme}://{auth.split(':', 1)[0]}:***@{host}"
    return url


def trial_id(rdb: Any, study: str, number: int) -> int:
    """The storage's id of trial `number` of `study` (what a worker's heartbeat and the reporter
    address)."""
    return int(
        rdb.get_trial_id_from_study_id_trial_number(rdb.get_study_id_from_name(study), number)
    )


class TrialReporter:
    """Reports a train run's epochs to its Optuna trial and asks the study's pruner whether to
    stop."""

    def __init__(self, link: TrialLink) -> None:
        import optuna

        quiet()
        self.link = link
        try:
            self.storage = storage(link.storage)
            spec = optuna.load_study(study_name=link.study, storage=self.storage).user_attrs.get(
                PRUNER_ATTR, {}
            )
            self.pruner = pruner(spec)
            self.study = optuna.load_study(
                study_name=link.study, storage=self.storage, pruner=self.pruner
            )
            self.trial_id = trial_id(self.storage, link.study, link.number)
        except PipelineError:
            raise
        except Exception as exc:  # unknown study or trial, lost connection
            raise PipelineError(
                f"sweep trial {link.number} of study {link.study!r} in {redact(link.storage)}: "
                f"{first_line(exc)}"
            ) from None

    def report(self, epoch: int, val_accuracy: float) -> bool:
        """Record the epoch's validation accuracy; True when the pruner says to stop the trial
        here."""
        try:
            # What Trial.report and Trial.should_prune do, through the storage's and the pruner's
            # public methods: this process did not ask for the trial, the sweep worker did. A
            # resumed epoch overwrites.
            self.storage.set_trial_intermediate_value(self.trial_id, epoch, float(val_accuracy))
            return bool(self.pruner.prune(self.study, self.storage.get_trial(self.trial_id)))
        except Exception as exc:  # a locked or lost database, a trial another worker marked failed
            raise PipelineError(
                f"sweep trial {self.link.number} of study {self.link.study}: cannot report epoch "
                f"{epoch} "
                f"({first_line(exc)})"
            ) from None


class TrialHook:
    """The train run's per-epoch hook (pipeline.core.hooks.EpochHook) when it is a sweep trial."""

    def __init__(self, link: TrialLink) -> None:
        self.link = link
        self.reporter = TrialReporter(link)

    def tags(self) -> dict[str, str]:
        """The study and trial, set on the run when it starts."""
        return self.link.tags()

    def after_epoch(self, result: EpochResult) -> hooks.Stop | None:
        """Report the epoch; a pruned trial ends like an early stop: outputs written, run FINISHED,
        tagged pruned."""
        if not self.reporter.report(result.epoch, result.val_accuracy):
            return None
        return hooks.Stop(
            f"pruned: trial {self.link.number} of study {self.link.study} stops after epoch "
            f"{result.epoch}",
            {PRUNED_TAG: "true"},
        )


def train_hook() -> TrialHook:
    """The hook of the trial the environment names (PIPELINE_TRAIN_HOOK's factory); PipelineError
    when the trial's variables are missing or the study or trial cannot be reached."""
    link = link_from_env()
    if link is None:
        raise PipelineError(
            f"{hooks.HOOK_ENV} is {__name__}, but none of {', '.join(TRIAL_ENV)} is set"
        )
    return TrialHook(link)
