"""The library internals the pipeline still touches, each with a test that fails loudly when the
library changes.

The list (see docs/speed.md for the seconds each buys, measured by benchmarks/bench.py):
1. core/tracking/model.py swaps MLflow's `warn_dependency_requirement_mismatches` out during
   `log_model`: MLflow has no switch for a check that maps every installed distribution to its
   modules.
2. core/tracking/client.py `_last_system_sample` reads
   `mlflow.tracking.fluent.run_id_to_system_metrics_monitor`: MLflow drops the last partial sampling
   interval, so a run shorter than it has no system metrics.
3. core/serving.py `InputError.serialize_as_json` (a public method, overridden): MLflow's scoring
   server prefixes a model's error with the whole input array; tests/test_serving.py checks the real
   server's answer is our one line.
4. core/tracking/schema.py `mlflow_revisions` reads MLflow's migration scripts
   (mlflow/store/db_migrations/versions) without importing them: its newest must be the head MLflow
   itself expects, and the list the whole of alembic's.
Each test here runs in a fresh interpreter, so no earlier import or cache in the test process hides
a change.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import REPO

MISMATCH_SCRIPT = """
import importlib_metadata, json, sys, warnings
from pathlib import Path
import mlflow
from pipeline.core.tracking import model

scans = []
real = importlib_metadata.packages_distributions
importlib_metadata.packages_distributions = lambda: scans.append(1) or real()
root = Path(sys.argv[1])
mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
exp = mlflow.create_experiment("guard", artifact_location=(root / "mlruns").as_uri())
(root / "model.pt").write_bytes(b"weights")
meta = {"in_channels": 1, "image_size": 28, "class_names": ["a", "b"], "dataset": "mnist"}
with mlflow.start_run(experiment_id=exp), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model.log_pyfunc(root / "model.pt", "guarded", meta)
    guarded = len(scans)
    with model._without_mismatch_check():
        pass
    from mlflow.utils import environment
    # MLflow's own check, unswapped.
    environment.warn_dependency_requirement_mismatches(["numpy==1.26.4"])
print(json.dumps({"guarded": guarded, "unguarded": len(scans) - guarded}))
"""

SYSTEM_METRICS_SCRIPT = """
import json, logging, sys, time
from pathlib import Path
import mlflow

root = Path(sys.argv[1])
mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
mlflow.set_system_metrics_sampling_interval(2)
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
exp = mlflow.create_experiment("guard", artifact_location=(root / "mlruns").as_uri())
with mlflow.start_run(experiment_id=exp, log_system_metrics=True) as run:
    time.sleep(1)
metrics = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
# What _last_system_sample reads.
from mlflow.tracking.fluent import run_id_to_system_metrics_monitor
print(json.dumps({"system": sorted(k for k in metrics if k.startswith("system/")),
                  "registry": type(run_id_to_system_metrics_monitor).__name__}))
"""


def _run(script: str, folder: Path) -> dict:
    import json

    proc = subprocess.run(
        [sys.executable, "-c", script, str(folder)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_log_model_still_skips_mlflows_distribution_scan(tmp_path: Path) -> None:
    counts = _run(MISMATCH_SCRIPT, tmp_path)
    assert counts["guarded"] == 0, (
        "MLflow scanned every installed distribution inside log_model although tracking/model.py "
        "swaps "
        "warn_dependency_requirement_mismatches out: MLflow moved the check; find its new name or "
        "drop the swap"
    )
    assert counts["unguarded"] > 0, (
        "MLflow's own check no longer scans distributions: the swap buys nothing, drop it"
    )


def test_short_runs_still_lose_their_last_system_metrics_interval(tmp_path: Path) -> None:
    found = _run(SYSTEM_METRICS_SCRIPT, tmp_path)
    assert found["registry"] == "dict", (
        "MLflow renamed run_id_to_system_metrics_monitor: update _last_system_sample"
    )
    assert found["system"] == [], (
        "MLflow now records the last partial sampling interval itself: drop tracking/client.py "
        "_last_system_sample"
    )


REVISIONS_SCRIPT = """
from alembic.script import ScriptDirectory
from mlflow.store.db.utils import _get_alembic_config, _get_latest_schema_revision
from pipeline.core.tracking import schema
ours = schema.mlflow_revisions()
assert ours[-1] == _get_latest_schema_revision(), (ours[-1], _get_latest_schema_revision())
theirs = ScriptDirectory.from_config(_get_alembic_config("")).walk_revisions()
assert sorted(ours) == sorted(r.revision for r in theirs)
"""


def test_migration_scripts_still_give_mlflows_schema_revisions() -> None:
    subprocess.run([sys.executable, "-c", REVISIONS_SCRIPT], cwd=REPO, check=True)
