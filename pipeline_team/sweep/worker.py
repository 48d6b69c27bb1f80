"""Optuna sweeps whose trials are DVC experiments: the search-space file, the study, and the worker loop.

A worker asks the study for a trial, runs it as `dvc exp run -n <study>-<number> -S key=value …` and
tells the study the trial's best validation accuracy (never a test metric). Each worker runs its
experiments in a private clone of the project (under `.dvc/tmp/sweep/`) that shares the project's
DVC cache: DVC allows one running experiment per workspace, and `dvc exp run --temp` processes in one
project share one stash of pending experiments, each running whatever entries it finds there, so a
trial could run with another trial's parameters. After each trial the worker pushes the experiment's git ref into the project,
where `dvc exp show` and `dvc exp apply` find it (its outputs are already in the shared cache).

The train stage of a trial learns which trial it is from the environment (core.trial) and reports
every epoch's validation accuracy, so the study's pruner can stop it; a pruned trial still ends as a
complete experiment and a FINISHED MLflow run, marked `pruned` in metrics/train.json and tagged
`optuna.pruned`, and is told to the study as PRUNED.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core import paths, trial
from pipeline.core.errors import PipelineError, first_line
from pipeline.core.params import Params, cli_value, flatten, read_yaml, with_values
from pipeline.core.repo import clean_env, git

DEFAULT_SPACE = Path("sweeps/space.yaml")
DEFAULT_STORAGE_FILE = "optuna.db"  # at the project root; git- and dvc-ignored
STORAGE_ENV = "PIPELINE_SWEEP_STORAGE"  # the team's storage URL, e.g. what `python -m pipeline stack env` prints
WORK_DIR = Path(".dvc/tmp/sweep")  # worker clones and trial logs; ignored by git (.dvc/.gitignore) and DVC
SPACE_ATTR = "pipeline.space"  # study user attribute: the search space it was created with
EXP_ATTR, RUN_ATTR = "dvc_exp", "mlflow_run_id"  # trial user attributes
STUDY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")  # becomes part of experiment (git ref) names
# Not sweepable: trials must log into the project's MLflow experiment and read its data.
FIXED_KEYS = ("mlflow.", "data.mirror")
HEARTBEAT_S = 10.0  # how often a waiting worker says its trial is alive (the storage's grace period is longer)


@dataclass(frozen=True)
class Dimension:
    """One parameter of the search space: a range (int or float, as the parameter is) or a list of choices."""

    key: str
    kind: str  # "int", "float" or "choices"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:  # -> optuna.distributions.BaseDistribution
        """The Optuna distribution to sample from."""
        from optuna import distributions as d

        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        if self.kind == "float":
            return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        # Optuna's choices must be scalars: lists (layer sizes) travel as their JSON text.
        return d.CategoricalDistribution([_choice_token(c) for c in self.choices])

    def value(self, sampled: Any) -> Any:
        """The params.yaml value of what Optuna sampled."""
        if self.kind == "choices":
            return next(c for c in self.choices if _choice_token(c) == sampled)
        return int(sampled) if self.kind == "int" else float(sampled)


@dataclass(frozen=True)
class SearchSpace:
    """What a sweep samples and how it prunes, as read from the space file."""

    dimensions: tuple[Dimension, ...]
    pruner: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, stored with the study so every worker can check it samples the same space."""
        return {"params": {d.key: {k: v for k, v in vars(d).items() if k != "key"} for d in self.dimensions},
                "pruner": self.pruner}


def _choice_token(choice: Any) -> Any:
    return json.dumps(choice) if isinstance(choice, list) else choice


def load_space(path: Path, base: Params) -> SearchSpace:
    """Read and check a search-space file against the parameters' rules (core.params) on top of `base`:
    unknown keys, bad ranges and values params.yaml would refuse stop here with one line naming the key."""
    where = str(path)
    try:
        raw = read_yaml(Path(path).read_text(), str(path))
    except FileNotFoundError:
        raise PipelineError(f"{where}: search-space file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{where}: cannot read ({first_line(exc)})") from None
    if not isinstance(raw, dict) or set(raw) - {"params", "pruner"}:
        raise PipelineError(f"{where}: must be a mapping with the keys params and (optionally) pruner")
    entries = raw.get("params")
    if not isinstance(entries, dict) or not entries:
        raise PipelineError(f"{where}: params must map dotted params.yaml keys to a range or choices")
    defaults = flatten(base)
    dims = tuple(_dimension(where, key, spec, defaults, base) for key, spec in entries.items())
    return SearchSpace(dims, _pruner_spec(where, raw.get("pruner") or {"type": "none"}))


def _dimension(where: str, key: Any, spec: Any, defaults: Mapping[str, Any], base: Params) -> Dimension:
    if not isinstance(key, str) or key not in defaults:
        raise PipelineError(f"{where}: unknown parameter {key!r} (see the parameter table in README.md)")
    if key.startswith(FIXED_KEYS):
        raise PipelineError(f"{where}: {key} cannot be swept (every trial logs to the project's store and reads its data)")
    if not isinstance(spec, dict):
        raise PipelineError(f"{where}: {key} must be {{low: …, high: …}} or {{choices: […]}}, got {spec!r}")
    if "choices" in spec:
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise PipelineError(f"{where}: {key}: choices must be a non-empty list and stand alone")
        for choice in spec["choices"]:
            _check_value(where, key, choice, base)
        if len({json.dumps(c, sort_keys=True) for c in spec["choices"]}) != len(spec["choices"]):
            raise PipelineError(f"{where}: {key}: choices repeat a value")
        return Dimension(key, "choices", choices=tuple(spec["choices"]))
    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= set(spec):
        raise PipelineError(f"{where}: {key} must have low and high (and optionally log or step), or choices")
    kind = _number_kind(key)
    if kind is None:
        raise PipelineError(f"{where}: {key} is not a number; give it choices instead of a range")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    numbers = (int,) if kind == "int" else (int, float)
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers) or not math.isfinite(value)):
            raise PipelineError(f"{where}: {key}: {name} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    if not isinstance(log, bool):
        raise PipelineError(f"{where}: {key}: log must be true or false, got {log!r}")
    if not low < high:
        raise PipelineError(f"{where}: {key}: low must be < high, got low {low!r} and high {high!r}")
    if log and low <= 0:
        raise PipelineError(f"{where}: {key}: a log range needs low > 0, got {low!r}")
    if step is not None and (step <= 0 or log):
        raise PipelineError(f"{where}: {key}: step must be > 0 and cannot be combined with log")
    # Every bound in core.params is an interval, so both ends valid means every value between is.
    for value in (low, high):
        _check_value(where, key, value, base)
    return Dimension(key, kind, float(low), float(high), log, None if step is None else float(step))


def _number_kind(key: str) -> str | None:
    """"int" or "float" for a numeric parameter (null allowed or not), None for any other type."""
    import typing

    cls: Any = Params
    *parents, name = key.split(".")
    for part in parents:
        cls = typing.get_type_hints(cls)[part]
    hint = typing.get_type_hints(cls)[name]
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    return {int: "int", float: "float"}.get(base)


def _check_value(where: str, key: str, value: Any, base: Params) -> None:
    # core.params names the key and what it allows: "space.yaml: train.lr must be a number > 0, got -1".
    with_values(base, {key: value}, source=where)


def _pruner_spec(where: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or spec.get("type", "none") not in trial.PRUNERS:
        raise PipelineError(f"{where}: pruner.type must be one of {', '.join(trial.PRUNERS)}")
    spec = {"type": spec.get("type", "none"), **{k: v for k, v in spec.items() if k != "type"}}
    allowed = trial.PRUNERS[spec["type"]]
    for key in spec:
        if key != "type" and key not in allowed:
            raise PipelineError(f"{where}: pruner.{key} is not an argument of the {spec['type']} pruner "
                                f"({', '.join(allowed) or 'it takes none'})")
    try:
        trial.pruner(spec)  # Optuna's own checks (ranges, a threshold needs lower or upper)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{where}: pruner: {first_line(exc)}") from None
    return spec


def storage_url(url: str | None, root: Path) -> str:
    """The storage URL to use: the given one, else SQLite at the project root; a relative SQLite path is
    made absolute (trials run in other folders and must reach the same file)."""
    if not url:
        return f"sqlite:///{root / DEFAULT_STORAGE_FILE}"
    if url.startswith("sqlite:///") and not url.removeprefix("sqlite:///").startswith("/"):
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).resolve()}"
    return url


def open_study(url: str, name: str, space: SearchSpace, create: bool = True) -> Any:  # -> optuna.Study
    """The study `name` in the storage (created when missing, with this space and pruner stored with it);
    one line when it exists with another space: its trials would not be comparable."""
    import optuna

    trial.quiet()
    check_study_name(name)
    storage = trial.storage(url)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    pruner=trial.pruner(space.pruner), load_if_exists=create)
    except Exception as exc:
        raise PipelineError(f"Optuna storage {trial.redact(url)}: {first_line(exc)}") from None
    wanted = json.loads(json.dumps(space.describe()))
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is None:
        study.set_user_attr(SPACE_ATTR, wanted)
        study.set_user_attr(trial.PRUNER_ATTR, space.pruner)
    elif stored != wanted:
        raise PipelineError(f"--study {name}: the study exists with another search space or pruner; "
                            "use a new study name (or the space file it was created with)")
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise PipelineError(f"--study {name}: the study minimizes; a sweep maximizes validation accuracy")
    return study


def check_study_name(name: str) -> None:
    """Study names become part of experiment names, hence of git refs."""
    if not STUDY_NAME.fullmatch(name):
        raise PipelineError(f"--study: {name!r} must start with a letter and hold only letters, digits, _ and - (at most 64)")


def exp_name(study: str, number: int) -> str:
    """The DVC experiment name of a trial."""
    return f"{study}-{number}"


@dataclass
class WorkerCopy:
    """A private clone of the project at its HEAD for one worker, sharing the project's DVC cache."""

    root: Path
    path: Path

    @classmethod
    def create(cls, root: Path, label: str) -> WorkerCopy:
        """Clone `root` at HEAD into .dvc/tmp/sweep/<label>, point it at root's cache, check its data out."""
        path = root / WORK_DIR / label
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        head = git("rev-parse", "HEAD", cwd=root)
        git("clone", "-q", str(root), str(path), cwd=root)
        git("-c", "advice.detachedHead=false", "checkout", "-q", head, cwd=path)
        cache = _dvc(["cache", "dir"], root).stdout.strip()
        _dvc(["cache", "dir", "--local", cache], path)
        copy = cls(root, path)
        # Data and statistics from the project's cache, so trials do not download them again; what the
        # cache lacks (a project that never ran) the first experiment reproduces.
        _dvc(["checkout", "-q"], path, check=False)
        return copy

    def reset(self) -> None:
        """Back to HEAD's files before the next trial. The model goes too, so that the train stage runs
        even when a trial's values equal HEAD's (the run is then a real, separately tracked one)."""
        git("checkout", "-q", "-f", "HEAD", "--", ".", cwd=self.path)
        (self.path / paths.MODEL).unlink(missing_ok=True)
        # A failed trial's checkpoint (git-ignored) would be resumed by a later trial with the same values.
        (self.path / paths.CHECKPOINT).unlink(missing_ok=True)

    def publish(self, name: str) -> str:
        """Push experiment `name`'s git ref into the project; returns the ref."""
        ref = find_exp_ref(self.path, name)
        if ref is None:
            raise PipelineError(f"experiment {name}: DVC made no experiment ref in {self.path}")
        for attempt in range(5):  # two workers pushing at once may meet on git's ref lock
            proc = subprocess.run(["git", "push", "-q", str(self.root), f"{ref}:{ref}"], cwd=self.path,
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                return ref
            time.sleep(0.5 * (attempt + 1))
        raise PipelineError(f"experiment {name}: git push into {self.root} failed: {first_line(Exception(proc.stderr))}")

    def remove(self) -> None:
        """Delete the clone (the experiments are in the project by now)."""
        shutil.rmtree(self.path, ignore_errors=True)


def find_exp_ref(repo: Path, name: str) -> str | None:
    """The git ref of DVC experiment `name` in `repo`, or None."""
    refs = git("for-each-ref", "--format=%(refname)", "refs/exps/", cwd=repo, check=False).splitlines()
    return next((r for r in refs if r.rsplit("/", 1)[-1] == name and not r.startswith(("refs/exps/exec/", "refs/exps/celery/"))), None)


def _dvc(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["dvc", *args], cwd=cwd, env=clean_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise PipelineError(f"dvc {' '.join(args)} in {cwd}: {first_line(Exception(proc.stderr or proc.stdout))}")
    return proc


@dataclass(frozen=True)
class TrialResult:
    """How one trial ended."""

    number: int
    name: str
    state: str  # COMPLETE, PRUNED or FAIL
    values: dict[str, Any]
    val_accuracy: float | None = None
    run_id: str | None = None
    epochs: int | None = None
    error: str | None = None

    def line(self) -> str:
        """One line a person reads as the sweep goes."""
        values = ", ".join(f"{k}={cli_value(v)}" for k, v in self.values.items())
        if self.state == "FAIL":
            return f"trial {self.number} ({self.name}) FAILED: {self.error}"
        acc = f"val_accuracy {self.val_accuracy:.4f}" if self.val_accuracy is not None else "no accuracy"
        how = f"pruned after epoch {self.epochs}" if self.state == "PRUNED" else f"{self.epochs} epochs"
        return f"trial {self.number} ({self.name}): {values} -> {acc}, {how}; MLflow run {self.run_id}"


def run_worker(
    root: Path,
    url: str,
    study_name: str,
    space: SearchSpace,
    base: Params,
    trials: int,
    label: str,
    trial_env: Mapping[str, str],
    log: Callable[[str], None],
) -> list[TrialResult]:
    """Run `trials` trials of the study, one after the other, each a DVC experiment in this worker's clone."""
    import optuna

    study = open_study(url, study_name, space)
    storage = trial.storage(url)
    copy = WorkerCopy.create(root, label)
    logs = root / WORK_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for _ in range(trials):
            optuna.storages.fail_stale_trials(study)  # trials of workers that died: FAIL, not RUNNING forever
            asked = study.ask({d.key: d.distribution() for d in space.dimensions})
            values = {d.key: d.value(asked.params[d.key]) for d in space.dimensions}
            name = exp_name(study_name, asked.number)
            asked.set_user_attr(EXP_ATTR, name)
            try:
                result = _run_trial(copy, url, storage, asked, name, values, base, trial_env, logs / f"{name}.log")
            except BaseException:  # Ctrl-C, SIGTERM: the trial must not stay RUNNING in the study
                study.tell(asked, state=optuna.trial.TrialState.FAIL)
                raise
            if result.run_id:
                asked.set_user_attr(RUN_ATTR, result.run_id)
            state = getattr(optuna.trial.TrialState, result.state)
            study.tell(asked, result.val_accuracy if result.state == "COMPLETE" else None, state=state)
            log(result.line())
            results.append(result)
    finally:
        copy.remove()
    return results


def _run_trial(
    copy: WorkerCopy, url: str, storage: Any, asked: Any, name: str, values: dict[str, Any], base: Params,
    trial_env: Mapping[str, str], log_path: Path,
) -> TrialResult:
    number = asked.number
    try:
        # Combinations core.params refuses (e.g. train.portable with bf16) never become an experiment.
        with_values(base, values, source=f"trial {number}")
        if find_exp_ref(copy.root, name):
            raise PipelineError(f"the project already has an experiment {name} (an earlier study of this name?); "
                                f"`dvc exp remove {name}` or use another --study")
    except PipelineError as exc:
        return TrialResult(number, name, "FAIL", values, error=str(exc))
    copy.reset()
    link = trial.TrialLink(url, asked.study.study_name, number)
    cmd = ["dvc", "exp", "run", "-n", name, *[a for k, v in values.items() for a in ("-S", f"{k}={cli_value(v)}")]]
    env = {**trial_env, **link.env()}
    with open(log_path, "w") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=copy.path, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own group: stopped whole on Ctrl-C
        try:
            while True:
                try:
                    code = proc.wait(timeout=HEARTBEAT_S)
                    break
                except subprocess.TimeoutExpired:
                    storage.record_heartbeat(asked._trial_id)
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    if code != 0:
        lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if ln.startswith(("error:", "ERROR:"))), lines[-1] if lines else "")
        return TrialResult(number, name, "FAIL", values, error=f"dvc exp run exited {code}: {reason} (log {log_path})")
    metrics = json.loads((copy.path / paths.TRAIN_METRICS).read_text())
    try:
        copy.publish(name)
    except PipelineError as exc:
        return TrialResult(number, name, "FAIL", values, error=str(exc))
    state = "PRUNED" if metrics.get("pruned") else "COMPLETE"
    return TrialResult(number, name, state, values, float(metrics["best_val_accuracy"]), metrics.get("mlflow_run_id"),
                       int(metrics.get("epochs_run", 0)))


def summary(study: Any) -> list[str]:
    """Lines describing the study's outcome: counts by state and its best trial (parameters, experiment, run)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    lines = [f"study {study.study_name}: {len(trials)} trials (" + ", ".join(f"{n.lower()} {c}" for n, c in counts.items()) + ")"]
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
