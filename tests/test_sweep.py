"""Sweeps for real: `python -m pipeline sweep` with Optuna RDB storage, several workers, every trial
a DVC experiment and an MLflow run; pruning on the per-epoch validation accuracy; search-space
errors."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
import yaml
from helpers import assert_one_line_error, create_project, run, runs

from pipeline.core.params import cli_value

# Two workers share the machine's two cores: one thread each, or they would fight over both.
PARAMS = {"train": {"threads": 1}}
SPACE = {
    "params": {
        "train.lr": {"low": 0.002, "high": 0.02, "log": True},
        "train.dropout": {"choices": [0.0, 0.25]},
    },
    "pruner": {"type": "none"},
}
# Deterministic pruning: validation accuracy is always below 1.0, so every trial stops after its
# first epoch of two (the space pins train.epochs: a choice of one value is a fixed override).
PRUNING_SPACE = {
    "params": {"train.lr": {"low": 0.002, "high": 0.02}, "train.epochs": {"choices": [2]}},
    "pruner": {"type": "threshold", "lower": 1.0, "n_warmup_steps": 0},
}


def sweep_project(root: Path) -> Path:
    """A project whose committed dvc.lock holds its data stages, as after a first `dvc repro`
    (workers then check the data out of the shared cache instead of downloading it again), with two
    space files."""
    create_project(root, PARAMS)
    run(["dvc", "repro", "download", "normalization-stats"], root)
    (root / "sweeps/test-space.yaml").write_text(yaml.safe_dump(SPACE))
    (root / "sweeps/pruning.yaml").write_text(yaml.safe_dump(PRUNING_SPACE))
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "data and sweep spaces"], root)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sweep_project(tmp_path_factory.mktemp("sweep") / "project")


def sweep(root: Path, *args: str, check: bool = True, **env: str):
    return run(["python", "-m", "pipeline", "sweep", *args], root, check=check, **env)


def study_trials(url: str, name: str) -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def exp_show(root: Path) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name → {params, metrics/train.json}."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    out = {}
    for baseline in shown:
        for exp_range in baseline.get("experiments") or []:
            for rev in exp_range["revs"]:
                data = rev.get("data") or {}
                out[exp_range.get("name") or rev["name"]] = {
                    "params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                    "train": data.get("metrics", {}).get("metrics/train.json", {}).get("data", {}),
                }
    return out


def assert_trials(
    root: Path, out: str, url: str, study: str, mlflow_runs: list, count: int
) -> None:
    """`count` DVC experiments, as many MLflow runs tagged with the study and complete trials, the
    best printed."""
    names = {f"{study}-{n}" for n in range(count)}
    shown = exp_show(root)
    assert names <= set(shown), shown.keys()
    trials = study_trials(url, study)
    assert sorted(t.number for t in trials) == list(range(count)) and all(
        t.state.name == "COMPLETE" for t in trials
    )
    tagged = [r for r in mlflow_runs if r.data.tags.get("optuna.study") == study]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in tagged) == list(range(count))
    for r in tagged:
        name = f"{study}-{r.data.tags['optuna.trial']}"
        assert r.info.status == "FINISHED" and r.data.tags["dvc.exp_name"] == name
        # The objective is the experiment's validation accuracy, the same number MLflow holds.
        trial = next(t for t in trials if t.number == int(r.data.tags["optuna.trial"]))
        assert (
            trial.value
            == shown[name]["train"]["best_val_accuracy"]
            == r.data.metrics["best_val_accuracy"]
        )
        assert float(r.data.params["train.lr"]) == pytest.approx(trial.params["train.lr"])
        assert "test_accuracy" in r.data.metrics  # evaluated, but never the objective
    # The workers really ran side by side: some two runs overlap in time.
    spans = sorted((r.info.start_time, r.info.end_time) for r in tagged)
    assert any(a_end > b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans)), spans
    best = max(trials, key=lambda t: t.value)
    assert f"best trial {best.number}: val_accuracy {best.value:.4f}" in out
    assert (
        f"  train.lr: {cli_value(best.params['train.lr'])}\n" in out
        and f"dvc exp apply {study}-{best.number}" in out
    )
    assert [p.name for p in (root / ".dvc/tmp/sweep").iterdir()] == ["logs"], (
        "a worker clone was left behind"
    )


def test_small_floats_from_dvc_set_param_stay_numbers(tmp_path: Path) -> None:
    # What `dvc exp run -S train.lr=0.00001` does to params.yaml: ruamel (YAML 1.2) writes `lr:
    # 1e-05`.
    from dvc.utils.hydra import apply_overrides

    from pipeline.core.params import load_params

    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 0.008\n  cnn_channels: [16, 32]\n")
    apply_overrides(
        str(path), [f"train.lr={cli_value(0.00001)}", f"train.cnn_channels={cli_value([8, 16])}"]
    )
    assert "1e-05" in path.read_text()
    params = load_params(path)
    assert params.train.lr == 0.00001 and params.train.cnn_channels == (8, 16)
    assert (cli_value(True), cli_value(None), cli_value(0.25), cli_value("sgd")) == (
        "true",
        "null",
        "0.25",
        "sgd",
    )


def test_search_space_is_checked_against_the_parameters(tmp_path: Path) -> None:
    from pipeline.core.errors import PipelineError
    from pipeline.core.params import Params
    from pipeline_team.sweep.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text(
        "params:\n  train.lr: {low: 1e-5, high: 0.1, log: true}\n  train.epochs: "
        "{low: 1, high: 4}\n"
        "  train.cnn_channels: {choices: [[8, 16], [16, 32]]}\n  data.limit: "
        "{choices: [null, 1000]}\n"
    )
    space = load_space(path, Params())
    kinds = {d.key: d.kind for d in space.dimensions}
    assert kinds == {
        "train.lr": "float",
        "train.epochs": "int",
        "train.cnn_channels": "choices",
        "data.limit": "choices",
    }
    channels = next(d for d in space.dimensions if d.key == "train.cnn_channels")
    assert channels.value(channels.distribution().choices[1]) == [
        16,
        32,
    ]  # lists travel as JSON text
    assert space.pruner == {"type": "none"}
    path.write_text("params:\n  train.epochs: {low: 1, high: 4.5}\n")
    with pytest.raises(PipelineError, match=r"train.epochs: high must be an integer"):
        load_space(path, Params())
    path.write_text("params:\n  train.model: {low: 1, high: 4}\n")
    with pytest.raises(PipelineError, match=r"train.model is not a number"):
        load_space(path, Params())


HOOK_CASES = {
    "not importable": (
        {"PIPELINE_TRAIN_HOOK": "no_such_hook_module"},
        "cannot import",
    ),
    "no factory": ({"PIPELINE_TRAIN_HOOK": "pipeline_team.sweep.space"}, "has no train_hook()"),
    "trial variables missing": (
        {"PIPELINE_TRAIN_HOOK": "pipeline_team.sweep.trial"},
        "none of PIPELINE_TRIAL_STORAGE",
    ),
    "one trial variable missing": (
        {
            "PIPELINE_TRAIN_HOOK": "pipeline_team.sweep.trial",
            "PIPELINE_TRIAL_STORAGE": "sqlite:///x.db",
            "PIPELINE_TRIAL_STUDY": "s",
        },
        "PIPELINE_TRIAL_NUMBER not set",
    ),
}


@pytest.mark.parametrize("case", list(HOOK_CASES))
def test_a_bad_train_hook_is_one_error_naming_the_variable(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The train stage imports the hook module only when PIPELINE_TRAIN_HOOK names one.
    from pipeline.core import hooks
    from pipeline.core.errors import PipelineError

    environ, needle = HOOK_CASES[case]
    for name in ("PIPELINE_TRIAL_STORAGE", "PIPELINE_TRIAL_STUDY", "PIPELINE_TRIAL_NUMBER"):
        monkeypatch.delenv(name, raising=False)
    assert hooks.from_env({}) is None
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(PipelineError, match=r"^PIPELINE_(TRAIN_HOOK|TRIAL_\w+)\b") as raised:
        hooks.from_env()
    assert needle in str(raised.value) and "\n" not in str(raised.value)


def test_a_trial_names_its_hook_for_the_train_stage() -> None:
    from pipeline.core import hooks
    from pipeline_team.sweep import trial

    env = trial.TrialLink("sqlite:///x.db", "s", 3).env()
    assert env[hooks.HOOK_ENV] == "pipeline_team.sweep.trial"
    assert trial.link_from_env(env) == trial.TrialLink("sqlite:///x.db", "s", 3)


@pytest.mark.e2e
def test_bad_search_space_is_one_line(tmp_path: Path) -> None:
    root = create_project(tmp_path / "project")
    cases = {
        "train.lrr: {low: 0.1, high: 1}": "unknown parameter 'train.lrr'",
        "train.lr: {low: 0.1, high: 0.01}": "train.lr: low must be < high",
        "train.dropout: "
        "{low: 0.0, high: 1.5}": "train.dropout must be a number >= 0 and < 1, got 1.5",
        "train.optimizer: {choices: [adam, lion]}": "train.optimizer must be one of",
        "train.lr: {low: 0.0, high: 0.1, log: true}": "train.lr: a log range needs low > 0",
        "mlflow.experiment_name: {choices: [a, b]}": "mlflow.experiment_name cannot be swept",
    }
    for line, needle in cases.items():
        (root / "space.yaml").write_text(f"params:\n  {line}\n")
        assert_one_line_error(
            sweep(root, "--space", "space.yaml", check=False), "space.yaml", needle
        )
    (root / "space.yaml").write_text(
        "params:\n  train.lr: {low: 0.001, high: 0.01}\npruner: {type: median, lower: 1}\n"
    )
    assert_one_line_error(
        sweep(root, "--space", "space.yaml", check=False), "pruner.lower is not an argument"
    )
    assert_one_line_error(sweep(root, "--study", "no spaces", check=False), "--study")
    assert not (root / "optuna.db").exists()  # nothing was created for a refused sweep


@pytest.mark.e2e
def test_two_workers_share_a_study_on_the_default_sqlite(project: Path) -> None:
    # One trial per worker (the suite's time); a worker running trial after trial is the pruning
    # test's.
    out = sweep(
        project,
        "--study",
        "lite",
        "--trials",
        "1",
        "--workers",
        "2",
        "--space",
        "sweeps/test-space.yaml",
    ).stdout
    url = f"sqlite:///{project / 'optuna.db'}"
    assert_trials(project, out, url, "lite", runs(project), count=2)
    # The best experiment is one `dvc exp apply` away.
    best = max(study_trials(url, "lite"), key=lambda t: t.value)
    run(["dvc", "exp", "apply", f"lite-{best.number}"], project)
    applied = yaml.safe_load((project / "params.yaml").read_text())
    assert applied["train"]["lr"] == pytest.approx(best.params["train.lr"])
    run(["git", "checkout", "--", "."], project)  # back to the baseline for the next test


@pytest.mark.e2e
def test_pruned_trials_end_cleanly_and_are_marked(project: Path) -> None:
    # One worker, two trials (pruned ones are short): the worker goes on to the next trial after the
    # first.
    out = sweep(
        project, "--study", "pruned", "--trials", "2", "--space", "sweeps/pruning.yaml"
    ).stdout
    assert out.count("pruned after epoch 1") == 2 and "no trial completed" in out
    trials = study_trials(f"sqlite:///{project / 'optuna.db'}", "pruned")
    assert sorted(t.number for t in trials) == [0, 1]
    assert all(t.state.name == "PRUNED" and list(t.intermediate_values) == [1] for t in trials)
    shown = exp_show(project)
    for name in ("pruned-0", "pruned-1"):
        train = shown[name]["train"]
        assert (
            train["pruned"] is True
            and train["epochs_run"] == 1
            and shown[name]["params"]["train"]["epochs"] == 2
        )
    mlflow_runs = [r for r in runs(project) if r.data.tags.get("optuna.study") == "pruned"]
    assert sorted(r.data.tags["optuna.trial"] for r in mlflow_runs) == ["0", "1"]
    for mlflow_run in mlflow_runs:
        assert (
            mlflow_run.info.status == "FINISHED" and mlflow_run.data.tags["optuna.pruned"] == "true"
        )
        assert (
            "test_accuracy" in mlflow_run.data.metrics
        )  # the experiment is complete: evaluated like any other


@pytest.mark.e2e
def test_two_workers_on_the_team_postgresql(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # `team_stack` (tests/conftest.py on the team branch) runs PostgreSQL 15 and an MLflow server;
    # skip without it.
    try:
        stack = request.getfixturevalue("team_stack")
    except pytest.FixtureLookupError:
        pytest.skip(
            "needs the team_stack fixture (PostgreSQL + MLflow server) from the team branch"
        )
    from helpers import EXPERIMENT
    from mlflow.tracking import MlflowClient

    root = sweep_project(tmp_path / "project")
    env = dict(stack.env)
    assert (
        env["PIPELINE_SWEEP_STORAGE"] == stack.optuna_storage
    )  # the team's Optuna database, from `stack env`
    out = sweep(
        root,
        "--study",
        "team",
        "--trials",
        "1",
        "--workers",
        "2",
        "--space",
        "sweeps/test-space.yaml",
        **env,
    ).stdout
    assert not (root / "optuna.db").exists() and not (root / "mlflow.db").exists()
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the server's credentials, for this client
    try:
        exp = client.get_experiment_by_name(EXPERIMENT)
        team_runs = client.search_runs(
            [exp.experiment_id], filter_string="tags.`optuna.study` = 'team'"
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert_trials(root, out, stack.optuna_storage, "team", team_runs, count=2)
