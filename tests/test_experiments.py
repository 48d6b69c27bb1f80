"""Experiments as a user runs and compares them: `dvc exp run`, the queue, plots and diffs,
`python -m pipeline compare`, and the MLflow compare view and predictions table in a real headless
Chromium."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from pathlib import Path

import pytest
from helpers import (
    DEFAULT_LR,
    OTHER_LR,
    REPO,
    chromium,
    create_project,
    model_uri,
    run,
    runs,
)

from pipeline_tools.compare import TRAINING_VIEW

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "test-artifacts"  # screenshots a person can look at (git-ignored)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A baseline run committed, then experiment `lr-low` with train.lr=0.005."""
    root = create_project(tmp_path_factory.mktemp("experiments") / "project")
    run(["dvc", "repro"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "baseline results"], root)
    run(["dvc", "exp", "run", "-n", "lr-low", "-S", f"train.lr={OTHER_LR}"], root)
    return root


def test_exp_run_is_a_second_tagged_run(project: Path) -> None:
    by_lr = {r.data.params["train.lr"]: r for r in runs(project)}
    assert set(by_lr) == {DEFAULT_LR, OTHER_LR}
    high = by_lr[OTHER_LR]
    assert high.data.tags["dvc.exp_name"] == "lr-low" and high.info.status == "FINISHED"
    baseline = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert high.data.tags["dvc.baseline_rev"] == baseline == high.data.tags["git.commit"]
    assert (
        high.data.tags["git.dirty"] == "false"
        and high.data.tags["params.changed"] == f"train.lr={OTHER_LR}"
    )
    assert "test_accuracy" in high.data.metrics
    assert high.inputs.dataset_inputs[0].dataset.name == "mnist"
    assert high.inputs.dataset_inputs[0].dataset.digest == high.data.tags["dataset.digest"][:36]
    shown = json.dumps(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout))
    assert "lr-low" in shown and "best_val_accuracy" in shown and high.info.run_id in shown


def test_plots_and_diffs_across_experiments(project: Path) -> None:
    plots = json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)["data"]
    assert set(plots) == {
        "loss",
        "accuracy",
        "confusion",
        "per_class",
        "roc",
        "precision_recall",
        "plots/train_samples.png",
        "plots/test_predictions.png",
    }
    assert all(p[0]["type"] == "vega" for k, p in plots.items() if not k.endswith(".png"))
    run(["dvc", "plots", "show"], project)
    assert (project / "dvc_plots" / "index.html").is_file()
    html = run(["dvc", "plots", "diff", "HEAD", "lr-low", "-o", "diff_plots"], project)
    assert (project / "diff_plots" / "index.html").is_file(), html.stdout
    metrics = run(["dvc", "metrics", "diff", "HEAD", "lr-low"], project).stdout
    assert "accuracy" in metrics
    params = run(["dvc", "params", "diff", "HEAD", "lr-low"], project).stdout
    assert "train.lr" in params and DEFAULT_LR in params and OTHER_LR in params


def test_report_is_markdown_of_what_changed_against_the_baseline(project: Path) -> None:
    # After `dvc exp run`, the workspace holds experiment lr-low; HEAD holds the baseline results.
    run(["python", "-m", "pipeline", "report", "--baseline", "HEAD", "-o", "report.md"], project)
    text = (project / "report.md").read_text()
    assert text.startswith("# Experiment report: workspace against `HEAD`")
    assert f"| train.lr | {DEFAULT_LR} | {OTHER_LR} |" in text
    baseline = json.loads(run(["git", "show", "HEAD:metrics/eval.json"], project).stdout)
    now = json.loads((project / "metrics/eval.json").read_text())
    row = f"| metrics/eval.json | accuracy | {baseline['accuracy']:.4f} | {now['accuracy']:.4f} |"
    assert row in text, text
    per_class = text.split("## Per-class test accuracy")[1].split("##")[0]
    assert [
        line.split("|")[1].strip()
        for line in per_class.splitlines()
        if line.startswith("| ") and "`" not in line
    ] == [str(d) for d in range(10)]
    assert (
        "![test_predictions](plots/test_predictions.png)" in text
        and (project / "plots/test_predictions.png").is_file()
    )
    bad = run(
        ["python", "-m", "pipeline", "report", "--baseline", "no-such-rev"], project, check=False
    )
    assert (
        bad.returncode == 2
        and bad.stderr.strip()
        == "error: --baseline: 'no-such-rev' is not a revision of this repository"
    )


def test_compare_command_prints_url_and_differing_params(project: Path) -> None:
    out = run(["python", "-m", "pipeline", "compare", "--last", "2"], project).stdout
    url, runs_url, *table = out.splitlines()
    assert url.startswith("http://127.0.0.1:5000/#/compare-runs?runs=[") and url.endswith(
        "&workflowType=machine_learning"
    )
    assert runs_url.startswith("all runs: http://127.0.0.1:5000/#/experiments/")
    text = "\n".join(table)
    assert "train.lr" in text and DEFAULT_LR in text and OTHER_LR in text
    assert "test_class_accuracy/9" in text and "seed" not in text  # only what differs
    named = run(["python", "-m", "pipeline", "compare", "--exp", "lr-low"], project).stdout
    assert "lr-low" in named
    missing = run(["python", "-m", "pipeline", "compare", "--exp", "nope"], project, check=False)
    assert (
        missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    )


def test_compare_view_in_a_real_browser(project: Path, mlflow_server) -> None:
    url = mlflow_server(backend=f"sqlite:///{project / 'mlflow.db'}")
    listed = run(
        ["python", "-m", "pipeline", "compare", "--last", "2", "--ui", url], project
    ).stdout
    compare_url = listed.splitlines()[0]
    names = [r.info.run_name for r in runs(project)]
    ARTIFACTS.mkdir(exist_ok=True)
    runs_url = listed.splitlines()[1].removeprefix("all runs: ")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1600, "height": 2400})
        page.goto(compare_url)
        page.get_by_text("test_accuracy", exact=True).first.wait_for(timeout=90_000)
        body = page.inner_text("body")
        per_class = scroll_metrics_to(page, "test_class_accuracy/0")
        page.screenshot(path=str(ARTIFACTS / "compare-view.png"), full_page=True)
        # docs/tracking.md's path (Comparing runs in the MLflow UI) by hand: the experiment opens on
        # its table of training runs (not on MLflow's GenAI overview); tick both runs, Compare, then
        # "Show diff only" under Parameters.
        page.goto(runs_url)
        page.get_by_text("Run Name").first.wait_for(timeout=90_000)
        for name in names:  # the table's header is drawn before its rows arrive
            page.get_by_text(name).first.wait_for(timeout=90_000)
        overview = page.inner_text("body")
        page.screenshot(path=str(ARTIFACTS / "runs-table.png"))
        ticks = page.locator("input.ag-checkbox-input[aria-label*='toggle row selection']")
        ticks.nth(0).click(force=True)  # ag-grid draws its own box over the real input
        ticks.nth(1).click(force=True)
        page.get_by_role("button", name="Compare").click()
        page.get_by_text("test_accuracy", exact=True).first.wait_for(timeout=90_000)
        all_params = page.inner_text("body")
        page.get_by_role("switch").first.click()  # the Parameters section's "Show diff only"
        page.get_by_text("data.dataset", exact=True).wait_for(state="detached", timeout=30_000)
        diff_only = page.inner_text("body")
        page.screenshot(path=str(ARTIFACTS / "compare-diff-only.png"), full_page=True)
    for needle in [
        *names,
        "train.lr",
        DEFAULT_LR,
        OTHER_LR,
        "test_accuracy",
        "test_balanced_accuracy",
    ]:
        assert needle in body, needle
    assert "test_class_accuracy/0" in per_class
    assert (ARTIFACTS / "compare-view.png").stat().st_size > 10_000
    assert all(name in overview for name in names) and "Token Usage" not in overview
    assert "data.dataset" in all_params and "train.batch_size" in all_params
    assert (
        "train.lr" in diff_only
        and "data.dataset" not in diff_only
        and "train.batch_size" not in diff_only
    )


def scroll_metrics_to(page, name: str) -> list[str]:  # page: playwright Page
    """Scroll the compare view's metrics box with the mouse wheel, a row at a time, until the row
    of metric `name` is drawn; returns the metric names the box draws then.

    The box (300 px) draws only the rows in view. Its names column follows the values column's
    scroll one scroll event late (MLflow 3.17 reads the values' position before it updates), so
    the wheel turns on until the name is there. Fails when the box ends first."""
    # Two grids side by side: the metric names, and the values, the one that scrolls.
    names, values = page.get_by_role("grid").nth(0), page.get_by_role("grid").nth(1)
    values.hover()
    while not names.get_by_role("link", name=name, exact=True).count():
        top, end = values.evaluate("g => [g.scrollTop, g.scrollHeight - g.clientHeight]")
        assert top < end, f"the metrics box ends before {name}"
        page.mouse.wheel(0, 45)  # one row
        page.wait_for_function(
            "([g, top]) => g.scrollTop > top", arg=[values.element_handle(), top], timeout=30_000
        )
    return names.get_by_role("link").all_inner_texts()


def predictions_columns() -> list[str]:
    """The columns of the evaluate stage's predictions table, as metrics.predictions names them."""
    import torch

    from pipeline.core.metrics import predictions

    return list(predictions(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), "ab", ["p"]))


def read_predictions(text: str) -> list[dict[str, str]]:
    """The rows of a plots/predictions.csv, as {column: text}."""
    return list(csv.DictReader(io.StringIO(text)))


def test_predictions_table_in_a_real_browser(project: Path, mlflow_server) -> None:
    """The evaluate stage's predictions.json (mlflow.log_table) as MLflow's UI draws it: a table
    on the run's Artifacts tab, and side by side per run in the runs' "Artifact evaluation" view,
    each value the one plots/predictions.csv of that run holds."""
    url = mlflow_server(backend=f"sqlite:///{project / 'mlflow.db'}")
    every = runs(project)
    baseline, low = every[0], next(r for r in every if r.data.tags.get("dvc.exp_name") == "lr-low")
    # The workspace holds experiment lr-low's outputs; HEAD holds the baseline's.
    low_rows = read_predictions((project / "plots/predictions.csv").read_text())
    base_rows = read_predictions(run(["git", "show", "HEAD:plots/predictions.csv"], project).stdout)
    # The last picture the two models classify differently: far from the first rows shown.
    low_row, base_row = [
        (a, b) for a, b in zip(low_rows, base_rows, strict=True) if a["predicted"] != b["predicted"]
    ][-1]
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        # Generous: the UI parses and lays out 10,000 rows a table, slowly on a busy machine.
        page.set_default_timeout(300_000)
        page.goto(f"{url}/#/experiments/{low.info.experiment_id}/runs/{low.info.run_id}")
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_label("predictions.json", exact=True).click()  # the artifact tree's entry
        table = page.get_by_role("table").filter(has_text="true_probability")
        # A header holds its sort button (named as the column) and a "Resize Column" button. The
        # last column is drawn scrolled out of view on the right: attached, not visible.
        header = table.get_by_role("columnheader").get_by_role("button", name="loss", exact=True)
        header.wait_for(state="attached")
        headers = table.get_by_role("columnheader").all_inner_texts()
        first = table.get_by_role("row").nth(1).get_by_role("cell").all_inner_texts()
        as_table = page.get_by_role("checkbox", name="View as table").is_checked()
        page.screenshot(path=str(ARTIFACTS / "predictions-table.png"))
        runs_url = f"{url}/#/experiments/{low.info.experiment_id}?{TRAINING_VIEW}"
        by_run = artifact_evaluation(page, runs_url, low_row)
        page.screenshot(path=str(ARTIFACTS / "predictions-by-run.png"))
    assert headers == predictions_columns() == list(low_rows[0]), headers
    assert as_table and first[:3] == [low_rows[0][k] for k in ("picture", "true", "predicted")]
    assert [float(v) for v in first[3:]] == [float(low_rows[0][k]) for k in headers[3:]], first
    assert by_run == {
        low.info.run_id: low_row["predicted"],
        baseline.info.run_id: base_row["predicted"],
    }


def choose_only(page, label: str, wanted: str) -> None:  # page: playwright Page
    """In the multiple-choice drop-down whose button reads `label`, select option `wanted` and
    clear every other, then close it; fails when the drop-down shows another selection."""
    box = page.get_by_role("combobox").filter(has_text=label)
    box.click()
    option = page.get_by_role("option", name=wanted, exact=True)  # once the tables' columns load
    if option.get_attribute("aria-selected") != "true":
        option.click()  # first: MLflow keeps the last selected option of some drop-downs
    for other in page.get_by_role("option").all():
        if other.get_attribute("aria-selected") == "true" and other.inner_text() != wanted:
            other.click()
    page.keyboard.press("Escape")
    assert box.inner_text().replace("\n", "") == f"{label}{wanted}", box.inner_text()


def artifact_evaluation(page, runs_url: str, row: dict[str, str]) -> dict[str, str]:
    """In the runs page's "Artifact evaluation" view (MLflow compares tables logged with
    log_table there): table predictions.json, grouped by picture, comparing the predicted class,
    filtered to `row`'s picture; returns each run's predicted class shown, by run id."""
    page.goto(runs_url)
    page.get_by_text("Run Name").first.wait_for()
    # The third of the view buttons (table, charts, artifact evaluation); its radio has no name.
    page.locator("label", has=page.locator("input[value='ARTIFACT']")).click()
    choose_only(page, "Table:", "predictions.json")  # per_class_accuracy.json is preselected
    choose_only(page, "Group by:", "picture")
    page.get_by_role("combobox").filter(has_text="Compare:").click()
    page.get_by_role("option", name="predicted", exact=True).click()
    page.get_by_placeholder("Filter by picture").fill(row["picture"])
    # ag-grid keys a row by its group (the picture) and a run's column by its run id.
    cells = page.locator(f"[role=row][row-id='{row['picture']}'] [role=gridcell][col-id]")
    cells.last.wait_for()
    page.get_by_role("row").filter(has_text="test/0").first.wait_for(state="detached")
    return {
        cell.get_attribute("col-id"): cell.inner_text()
        for cell in cells.all()
        if cell.get_attribute("col-id") != "picture"
    }


def test_plots_draw_offline_in_a_real_browser(project: Path) -> None:
    run(["dvc", "plots", "show"], project)
    ARTIFACTS.mkdir(exist_ok=True)
    leaving = []  # every request that is not for a local file: there must be none

    def only_files(route) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            leaving.append(route.request.url)
            route.abort()

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.route("**/*", only_files)
        page.goto((project / "dvc_plots" / "index.html").as_uri())
        page.wait_for_function("document.querySelectorAll('svg.marks').length >= 6", timeout=60_000)
        charts = page.evaluate(
            "Array.from(document.querySelectorAll('svg.marks')).map(svg => "
            "[svg.closest('div[id]').id, svg.querySelectorAll('.mark-line path, .mark-rect path, "
            ".mark-symbol path').length])"
        )
        images = page.evaluate("Array.from(document.images).map(img => img.naturalWidth)")
        page.screenshot(path=str(ARTIFACTS / "plots-offline.png"), full_page=True)
    assert leaving == []
    drawn = dict(charts)
    assert set(drawn) == {
        "loss",
        "accuracy",
        "confusion",
        "per_class",
        "roc",
        "precision_recall",
    }, charts
    assert all(marks > 0 for marks in drawn.values()), (
        charts
    )  # lines, cells and bars, not empty axes
    assert (
        drawn["roc"] >= 10 and drawn["precision_recall"] >= 10
    )  # a curve per class (custom template)
    assert len(images) == 2 and all(width > 0 for width in images)  # the two image grids


def run_queued(project: Path, experiments: dict[str, list[str]]) -> str:
    """Queue each named experiment with its `-S` values, run the queue with two workers, wait for
    it (at most 10 minutes); returns `dvc queue status` at the end."""
    for name, values in experiments.items():
        run(
            ["dvc", "exp", "run", "--queue", "-n", name, *[a for v in values for a in ("-S", v)]],
            project,
        )
    run(["dvc", "queue", "start", "-j", "2"], project)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], project).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    return status


def test_two_queued_experiments_run_in_parallel_into_one_store(
    project: Path, tmp_path: Path
) -> None:
    import mlflow
    import numpy as np
    from helpers import store

    before = len(runs(project))
    # The second creates its MLflow experiment from DVC's throwaway copy: the artifacts must still
    # land at the project root, or every model of that experiment vanishes with the copy.
    status = run_queued(
        project,
        {"q-seed-1": ["seed=1"], "q-seed-2": ["seed=2", "mlflow.experiment_name=queued"]},
    )
    assert status.count("Success") >= 2, status
    logs = "".join(
        run(["dvc", "queue", "logs", name], project, check=False).stdout
        for name in ["q-seed-1", "q-seed-2"]
    )
    assert "database is locked" not in logs
    client = store(project)
    other = client.search_runs([client.get_experiment_by_name("queued").experiment_id])
    queued = {r.data.tags.get("dvc.exp_name"): r for r in [*runs(project), *other]}
    assert (
        {"q-seed-1", "q-seed-2"} <= set(queued)
        and len(runs(project)) == before + 1
        and len(other) == 1
    )
    assert all(
        queued[n].info.status == "FINISHED" and "test_accuracy" in queued[n].data.metrics
        for n in ["q-seed-1", "q-seed-2"]
    )
    assert not list((project / ".dvc/tmp/exps").rglob("mlflow.db")), (
        "a queued run wrote its own store"
    )
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    for name in ["q-seed-1", "q-seed-2"]:  # after DVC removed its copies
        run_id = queued[name].info.run_id
        assert {"confusion_matrix.png", "per_class_accuracy.json"} <= {
            a.path for a in client.list_artifacts(run_id)
        }
        (tmp_path / name).mkdir()  # else MLflow downloads into a temporary folder it never removes
        model = mlflow.pyfunc.load_model(model_uri(queued[name]), dst_path=str(tmp_path / name))
        assert model.predict(np.zeros((2, 1, 28, 28), dtype=np.uint8)).shape == (2, 10)
    shutil.rmtree(project / "diff_plots", ignore_errors=True)


def test_back_to_the_baseline_deletes_nothing(project: Path, tmp_path: Path) -> None:
    # In the project: the workspace holds an experiment; its baseline's model is in the local cache.
    out = run(["python", "-m", "pipeline", "baseline"], project).stdout
    assert (
        "restored from HEAD: params.yaml, dvc.lock" in out
        and "models/model.pt" in out.split("DVC cache:")[1]
    )
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], project).stdout == ""
    assert "up to date" in run(["dvc", "status"], project).stdout  # the model is the lock's again
    # A fresh clone elsewhere: no cache, so nothing can be checked out; the model there stays.
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    (clone / "models").mkdir(exist_ok=True)
    (clone / "models/model.pt").write_bytes(b"a model trained on this machine")
    out = run(["python", "-m", "pipeline", "baseline"], clone).stdout
    assert "models/model.pt: the committed copy is in no cache on this machine" in out
    assert (clone / "models/model.pt").read_bytes() == b"a model trained on this machine"


def test_the_report_lists_headline_metrics_first() -> None:
    """A new user found accuracy buried among per_class_f1.* in DVC's order."""
    from pipeline_tools.report import metrics_section

    entry = {"old": 0.5, "new": 0.6, "diff": 0.1}
    names = ["per_class_f1.0", "loss", "top3_accuracy", "accuracy", "per_class_f1.1", "macro_f1"]
    lines, _ = metrics_section({"metrics/eval.json": dict.fromkeys(names, entry)}, "HEAD")
    shown = [line.split("|")[2].strip() for line in lines[4:]]
    assert shown == [
        "accuracy",
        "loss",
        "macro_f1",
        "top3_accuracy",
        "per_class_f1.0",
        "per_class_f1.1",
    ]
