"""The sweep's worker loop: ask the study for a trial, run it as `dvc exp run -n <study>-<number> -S
key=value …` in a private clone of the project, tell the study the trial's best validation accuracy
(never a test metric).

Each worker runs its experiments in its own clone (under `.dvc/tmp/sweep/`) that shares the
project's DVC cache: DVC allows one running experiment per workspace, and `dvc exp run --temp`
processes in one project share one stash of pending experiments, each running whatever entries it
finds there, so a trial could run with another trial's parameters. After each trial the worker hands
the experiment to the project, where `dvc exp show` and `dvc exp apply` find it (its outputs are
already in the shared cache).

The train stage of a trial learns which trial it is from the environment: PIPELINE_TRAIN_HOOK
names `pipeline_team.sweep.trial`, whose per-epoch hook reports every epoch's validation accuracy,
so the study's pruner can stop it; a pruned trial still ends as a complete experiment and a
FINISHED MLflow run, marked `pruned` in metrics/train.json and tagged `optuna.pruned`, and is told
to the study as PRUNED.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import paths
from pipeline.core.errors import PipelineError, first_line
from pipeline.core.params import Params, cli_value, with_values
from pipeline.core.repo import clean_env, git
from pipeline_team.sweep import trial
from pipeline_team.sweep.space import SearchSpace
from pipeline_team.sweep.study import EXP_ATTR, RUN_ATTR, exp_name, open_study

WORK_DIR = Path(
    ".dvc/tmp/sweep"
)  # worker clones and trial logs; ignored by git (.dvc/.gitignore) and DVC
# How often a waiting worker says its trial is alive (the storage's grace period is longer).
HEARTBEAT_S = 10.0


@dataclass
class WorkerCopy:
    """A private clone of the project at its HEAD for one worker, sharing the project's DVC
    cache."""

    root: Path
    path: Path

    @classmethod
    def create(cls, root: Path, label: str) -> WorkerCopy:
        """Clone `root` at HEAD into .dvc/tmp/sweep/<label>, point it at root's cache, check its
        data out."""
        path = root / WORK_DIR / label
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        head = git("rev-parse", "HEAD", cwd=root)
        git("clone", "-q", str(root), str(path), cwd=root)
        git("-c", "advice.detachedHead=false", "checkout", "-q", head, cwd=path)
        cache = _dvc(["cache", "dir"], root).stdout.strip()
        _dvc(["cache", "dir", "--local", cache], path)
        copy = cls(root, path)
        # Data and statistics from the project's cache, so trials do not download them again; what
        # the cache lacks (a project that never ran) the first experiment reproduces.
        _dvc(["checkout", "-q"], path, check=False)
        return copy

    def reset(self) -> None:
        """Back to HEAD's files before the next trial. The model goes too, so that the train stage
        runs even when a trial's values equal HEAD's (the run is then a real, separately tracked
        one)."""
        git("checkout", "-q", "-f", "HEAD", "--", ".", cwd=self.path)
        (self.path / paths.MODEL).unlink(missing_ok=True)
        # A failed trial's checkpoint (git-ignored) would be resumed by a later trial with the same
        # values.
        (self.path / paths.CHECKPOINT).unlink(missing_ok=True)

    def publish(self, name: str) -> None:
        """Hand experiment `name` to the project (`dvc exp push`; its outputs are in the shared
        cache already)."""
        for attempt in range(5):  # two workers pushing at once may meet on git's ref lock
            proc = _dvc(["exp", "push", "--no-cache", str(self.root), name], self.path, check=False)
            # A name the project already holds for another experiment is "No experiments to push",
            # exit 0.
            if proc.returncode == 0 and "No experiments to push" not in proc.stdout:
                return
            time.sleep(0.5 * (attempt + 1))
        raise PipelineError(
            f"experiment {name}: dvc exp push into {self.root} failed: "
            f"{first_line(Exception(proc.stderr or proc.stdout))}"
        )

    def remove(self) -> None:
        """Delete the clone (the experiments are in the project by now)."""
        shutil.rmtree(self.path, ignore_errors=True)


def has_experiment(repo: Path, name: str) -> bool:
    """Whether the project at `repo` holds a DVC experiment `name` (on any baseline commit)."""
    return (
        name
        in _dvc(["exp", "list", "--all-commits", "--name-only"], repo, check=False).stdout.split()
    )


def _dvc(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    from pipeline.core.repo import executable

    proc = subprocess.run(
        [executable("dvc"), *args], cwd=cwd, env=clean_env(), capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise PipelineError(
            f"dvc {' '.join(args)} in {cwd}: {first_line(Exception(proc.stderr or proc.stdout))}"
        )
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
        acc = (
            f"val_accuracy {self.val_accuracy:.4f}"
            if self.val_accuracy is not None
            else "no accuracy"
        )
        how = (
            f"pruned after epoch {self.epochs}"
            if self.state == "PRUNED"
            else f"{self.epochs} epochs"
        )
        return (
            f"trial {self.number} ({self.name}): {values} -> {acc}, {how}; MLflow run {self.run_id}"
        )


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
    """Run `trials` trials of the study, one after the other, each a DVC experiment in this worker's
    clone."""
    import optuna

    study = open_study(url, study_name, space)
    storage = trial.storage(url)
    copy = WorkerCopy.create(root, label)
    logs = root / WORK_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for _ in range(trials):
            optuna.storages.fail_stale_trials(
                study
            )  # trials of workers that died: FAIL, not RUNNING forever
            asked = study.ask({d.key: d.distribution() for d in space.dimensions})
            values = {d.key: d.value(asked.params[d.key]) for d in space.dimensions}
            name = exp_name(study_name, asked.number)
            asked.set_user_attr(EXP_ATTR, name)
            try:
                result = _run_trial(
                    copy, url, storage, asked, name, values, base, trial_env, logs / f"{name}.log"
                )
            except BaseException:  # Ctrl-C, SIGTERM: the trial must not stay RUNNING in the study
                study.tell(asked, state=optuna.trial.TrialState.FAIL)
                raise
            if result.run_id:
                asked.set_user_attr(RUN_ATTR, result.run_id)
            state = getattr(optuna.trial.TrialState, result.state)
            study.tell(
                asked, result.val_accuracy if result.state == "COMPLETE" else None, state=state
            )
            log(result.line())
            results.append(result)
    finally:
        copy.remove()
    return results


def _run_trial(
    copy: WorkerCopy,
    url: str,
    storage: Any,
    asked: Any,
    name: str,
    values: dict[str, Any],
    base: Params,
    trial_env: Mapping[str, str],
    log_path: Path,
) -> TrialResult:
    """Run one asked trial as experiment `name` in the worker's clone (its output to `log_path`)
    and read how it ended; a trial that cannot run, fails or cannot be published is FAIL."""
    number = asked.number
    try:
        _check_trial(copy, name, values, base, number)
    except PipelineError as exc:
        return TrialResult(number, name, "FAIL", values, error=str(exc))
    copy.reset()
    link = trial.TrialLink(url, asked.study.study_name, number)
    cmd = [
        "dvc",
        "exp",
        "run",
        "-n",
        name,
        *[a for k, v in values.items() for a in ("-S", f"{k}={cli_value(v)}")],
    ]
    asked_id = trial.trial_id(storage, asked.study.study_name, number)
    code = _run_experiment(cmd, copy.path, {**trial_env, **link.env()}, log_path, storage, asked_id)
    if code != 0:
        return TrialResult(number, name, "FAIL", values, error=_failure(code, log_path))
    metrics = json.loads((copy.path / paths.TRAIN_METRICS).read_text())
    try:
        copy.publish(name)
    except PipelineError as exc:
        return TrialResult(number, name, "FAIL", values, error=str(exc))
    state = "PRUNED" if metrics.get("pruned") else "COMPLETE"
    return TrialResult(
        number,
        name,
        state,
        values,
        float(metrics["best_val_accuracy"]),
        metrics.get("mlflow_run_id"),
        int(metrics.get("epochs_run", 0)),
    )


def _check_trial(
    copy: WorkerCopy, name: str, values: dict[str, Any], base: Params, number: int
) -> None:
    """PipelineError when the trial's values are refused or its experiment name is taken."""
    # Combinations core.params refuses (e.g. train.portable with bf16) never become an experiment.
    with_values(base, values, source=f"trial {number}")
    if has_experiment(copy.root, name):
        raise PipelineError(
            f"the project already has an experiment {name} (an earlier study of this name?); "
            f"`dvc exp remove {name}` or use another --study"
        )


def _run_experiment(
    cmd: list[str],
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    storage: Any,
    asked_id: int,
) -> int:
    """Run `cmd` (the trial's `dvc exp run`) with its output in `log_path`, recording the trial's
    heartbeat while it runs; its exit code. Interrupted, the whole process group is stopped."""
    with open(log_path, "w") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )  # its own group: stopped whole on Ctrl-C
        try:
            while True:
                try:
                    return proc.wait(timeout=HEARTBEAT_S)
                except subprocess.TimeoutExpired:
                    storage.record_heartbeat(asked_id)
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise


def _failure(code: int, log_path: Path) -> str:
    """Why a trial's `dvc exp run` failed: its last error line (or last line) and its log."""
    lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
    reason = next(
        (ln for ln in reversed(lines) if ln.startswith(("error:", "ERROR:"))),
        lines[-1] if lines else "",
    )
    return f"dvc exp run exited {code}: {reason} (log {log_path})"
