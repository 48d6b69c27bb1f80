"""`python -m pipeline mistakes`: the pictures to look at first – the fix loop of a data set.

Scores one split of the workspace's decoded data (data/raw) with the model – models/model.pt, or
the model an MLflow run logged (`--run-id`) – and lists its pictures by the model's loss on them,
highest first (plain cross-entropy, as the validation loss: no label smoothing, no class weights),
or with `--confident` only those predicted as another class, most confident first. A picture is
its path inside data.folder for a folder of pictures (as the download stage recorded it in
data/raw/folder/<split>/files.json), `<split>/<index>` for a built-in dataset.

No leak of the test split: only the chosen split is scored and listed, nothing is fitted or
tuned on it, and the listing changes no file. The model was fit on the training split, so
`--split train` losses are in-sample (low for most pictures, memorised or not); a picture with a
high loss there is one the model could not fit even though it saw it with that label, which is
what a wrong label looks like – label noise surfaces there before the test split has to be
touched. (The training split includes the pictures the train stage carved off for validation.)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from pipeline.cli import reports_errors
from pipeline.core import paths
from pipeline.core.errors import PipelineError, first_line


@dataclass(frozen=True)
class Mistake:
    """One listed picture: where it is, its label, the model's top class and its probability, and
    the loss (nats) of the label under the model."""

    picture: str
    true: str
    predicted: str
    probability: float
    loss: float


def run_model_file(run_id: str, folder: Path) -> tuple[Path, dict[str, str]]:
    """(models/model.pt as MLflow run `run_id` logged it, downloaded into `folder`; the run's
    tags). PipelineError (one line) for an unreachable or damaged store, an unknown run, or a run
    without a model."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline.core.tracking import store
    from pipeline.core.tracking.model import run_models

    store.check_environment()
    uri = store.tracking_uri()
    logged = run_models(run_id, "--run-id")
    if not logged:
        raise PipelineError(f"--run-id: run {run_id} logged no model")
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    try:
        tags = dict(MlflowClient(uri).get_run(run_id).data.tags)  # for the restore hint
        local = Path(
            download_artifacts(
                artifact_uri=f"models:/{logged[0][1]}",
                dst_path=str(folder),
                tracking_uri=uri,
            )
        )
    except (MlflowException, SQLAlchemyError, OSError) as exc:
        raise PipelineError(
            f"MLflow store {uri}: run {run_id}'s model: {first_line(exc)}"
        ) from None
    found = sorted(local.glob(f"artifacts/{paths.MODEL.name}"))
    if not found:
        raise PipelineError(f"--run-id: run {run_id}'s model holds no {paths.MODEL.name}")
    return found[0], tags


def restore_hint(tags: dict[str, str]) -> str:
    """How to put back the data a run's model was trained on, from its tags (dvc.exp_name,
    git.commit): rerunning the pipeline would train another model instead."""
    if tags.get("dvc.exp_name"):
        return f"restore that run's data first (dvc exp apply {tags['dvc.exp_name']})"
    if tags.get("git.commit"):
        return (
            f"restore that run's data first (git checkout {tags['git.commit'][:12]}, then dvc "
            "checkout)"
        )
    return "restore that run's data first (check out its commit, then dvc checkout)"


def picture_names(spec: Any, split: str, count: int) -> list[str]:
    """What a person finds each picture of the split by: its path inside data.folder, or
    `<split>/<index>` for a built-in dataset."""
    if not spec.from_folder:
        return [f"{split}/{i}" for i in range(count)]
    listed = paths.RAW / spec.folder / split / "files.json"
    try:
        names = json.loads(listed.read_text())
    except (OSError, ValueError):
        names = None
    if not isinstance(names, list) or len(names) != count:
        raise PipelineError(
            f"{listed}: missing or not the split's {count} pictures; rerun the download stage "
            "(dvc repro -f download)"
        )
    return [str(name) for name in names]


def score(
    model_file: Path,
    split: str,
    model: str | None = None,
    remedy: str = "rerun the pipeline (dvc repro)",
) -> tuple[list[str], Any, Any, list[str]]:
    """(picture names, int64 labels N, float32 logits N×classes, class names) of `split` of
    data/raw under the model in `model_file`. PipelineError, naming `model` (default: the file)
    and `remedy`, when data/raw holds another dataset, other classes or another picture size than
    the model was trained on."""
    from pipeline.core import datasets, models

    model_obj, meta = models.load(model_file)
    names = list(meta["class_names"])
    spec = datasets.fitting_spec(paths.RAW, meta, model or model_file, remedy)
    images, labels = datasets.load_split(spec, paths.RAW, train=split == "train")
    logits = models.logits(model_obj, images)
    return picture_names(spec, split, len(labels)), labels, logits, names


def rank(
    pictures: list[str], labels: Any, logits: Any, names: list[str], top: int, confident: bool
) -> list[Mistake]:
    """The `top` pictures to look at: by loss, highest first; with `confident`, only those
    predicted as another class, by the predicted class's probability, highest first (ties: in
    split order)."""
    import torch
    import torch.nn.functional as F

    # In float64: a confidently wrong prediction's loss must not overflow to infinity.
    losses = F.cross_entropy(logits.double(), labels, reduction="none")
    probs = torch.softmax(logits.double(), dim=1)
    best, predicted = probs.max(1)
    if confident:
        wrong = (predicted != labels).nonzero().flatten()
        order = wrong[torch.sort(best[wrong], descending=True, stable=True).indices]
    else:
        order = torch.sort(losses, descending=True, stable=True).indices
    return [
        Mistake(
            pictures[i],
            names[int(labels[i])],
            names[int(predicted[i])],
            float(best[i]),
            float(losses[i]),
        )
        for i in order[:top].tolist()
    ]


def table(rows: list[Mistake]) -> str:
    """The rows as aligned text columns."""
    head = ("picture", "true", "predicted", "probability", "loss")
    cells = [head] + [
        (r.picture, r.true, r.predicted, f"{r.probability:.3f}", f"{r.loss:.3f}") for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    )


@click.command(help=__doc__.split("\n\n", 1)[1].replace("`", "") if __doc__ else None)
@click.option(
    "--split",
    type=click.Choice(["train", "test"]),
    default="train",
    show_default=True,
    help="The split to score and list (only it is read; train losses are in-sample).",
)
@click.option(
    "--top", type=click.IntRange(min=1), default=20, show_default=True, help="Pictures listed."
)
@click.option(
    "--confident",
    is_flag=True,
    help="Only pictures predicted as another class, most confident first (not by loss).",
)
@click.option("--run-id", default=None, help="Score with this MLflow run's model instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@reports_errors
def main(split: str, top: int, confident: bool, run_id: str | None, as_json: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mistakes-")) if run_id else None
    try:
        if run_id and tmp:
            model_file, tags = run_model_file(run_id, tmp)
            found = score(model_file, split, f"--run-id {run_id}: its model", restore_hint(tags))
        else:
            found = score(paths.MODEL, split)
        pictures, labels, logits, names = found
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    rows = rank(pictures, labels, logits, names, top, confident)
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    how = "predicted as another class, most confident first" if confident else "highest loss first"
    source = f"MLflow run {run_id}" if run_id else str(paths.MODEL)
    click.echo(f"# {split} split of {paths.RAW}, {how}; model: {source}")
    click.echo(table(rows) if rows else nothing_wrong(split))


def nothing_wrong(split: str) -> str:
    """What `--confident` prints instead of an empty table (only it can find no picture)."""
    return f"the model classifies every picture of the {split} split right"


if __name__ == "__main__":
    main()
