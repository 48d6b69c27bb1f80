"""Where the stages read and write, relative to the project root (DVC runs every stage there)."""

from __future__ import annotations

import os
from pathlib import Path

PARAMS = Path("params.yaml")
RAW = Path("data/raw")
STATS = Path("data/stats.json")
MODEL = Path("models/model.pt")
START = Path("models/start.pt")  # the starting weights (train.weights), from the weights stage
WEIGHTS = Path("weights")  # the project's own weights files, a dep of the weights stage
RUN_FILE = Path("models/mlflow_run.json")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_PLOT = Path("plots/train.csv")
EVAL_METRICS = Path("metrics/eval.json")
ONNX_MODEL = Path("models/model.onnx")
EXPORT_METRICS = Path("metrics/export.json")
CONFUSION_PLOT = Path("plots/confusion.csv")
PER_CLASS_PLOT = Path("plots/per_class.csv")
ROC_PLOT = Path("plots/roc.csv")
PRECISION_RECALL_PLOT = Path("plots/precision_recall.csv")
TEST_SAMPLES_PLOT = Path("plots/test_predictions.png")
PREDICTIONS = Path("plots/predictions.csv")  # every test picture's prediction
TRAIN_SAMPLES_PLOT = Path("plots/train_samples.png")
# Not a DVC output: DVC would delete it before a resume.
CHECKPOINT = Path("checkpoints/train.pt")
# What DVC and the stages rewrite during a plain run: not "code" when deciding whether a run's code
# was committed (the outputs' folders, the lock file, and params.yaml, which `dvc exp run -S`
# edits).
NOT_CODE = (
    PARAMS,
    Path("dvc.lock"),
    RAW.parent,
    MODEL.parent,
    TRAIN_METRICS.parent,
    TRAIN_PLOT.parent,
)


def project_root() -> Path:
    """The DVC project root: DVC_ROOT if DVC set it, else the nearest folder upward holding `.dvc`.

    Under `dvc exp run --queue` the stage runs in a copy below `.dvc/tmp/exps/`, but DVC_ROOT still
    names the real project, which is what must hold the MLflow store and relative mirror paths.
    """
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    cwd = Path.cwd().resolve()
    return next((p for p in (cwd, *cwd.parents) if (p / ".dvc").is_dir()), cwd)
