"""`python -m pipeline predict PATH…`: top-k classes with probabilities for image files or
folders."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from pipeline.cli import reports_errors
from pipeline.core import paths
from pipeline.core.errors import PipelineError
from pipeline.core.images import SUFFIXES

if TYPE_CHECKING:
    from pipeline.core.export import Session

EXIT_SKIPPED = 1  # some files could not be read; 2 (EXIT_USER_ERROR) stays bad input


def image_files(inputs: list[Path]) -> list[Path]:
    """The image files named, plus those directly inside named folders (sorted)."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
            if not found:
                raise PipelineError(f"{path}: no image files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise PipelineError(f"{path}: no such file or folder")
    return files


def read_images(
    files: list[Path], channels: int, size: int
) -> tuple[list[Path], np.ndarray, list[str]]:
    """The readable pictures among `files` as the model expects them: (their paths, uint8
    N×C×size×size, one line per file that cannot be read naming it and why).

    Through the very function the download stage decodes a folder's pictures with
    (core.images.read: EXIF orientation, colour mode, resize and centre crop as torchvision).
    np.stack copies into a new, writable array: a grey picture is a read-only view of Pillow's
    buffer, which torch.from_numpy warns about."""
    from pipeline.core.images import ImageError, read

    read_files, pictures, unreadable = [], [], []
    for path in files:
        try:
            pictures.append(read(path, channels, size))
            read_files.append(path)
        except ImageError as exc:
            unreadable.append(f"{path}: not a readable image ({exc})")
    batch = np.stack(pictures) if pictures else np.zeros((0, channels, size, size), np.uint8)
    return read_files, batch, unreadable


def onnx_session(model_file: Path, engine: str) -> tuple[Path, Session] | None:
    """The ONNX model to run and its onnxruntime session, or None for the torch model:
    `model_file` itself when it is one; otherwise (engine auto) the .onnx beside it when the export
    stage wrote it from this very model.pt (its source_sha256), so that a model retrained since is
    never answered by a stale export. PipelineError when engine onnx finds none."""
    from pipeline.core import export

    if engine == "torch":
        return None
    onnx = model_file if model_file.suffix == ".onnx" else model_file.with_suffix(".onnx")
    if engine == "onnx" or onnx == model_file:
        if not onnx.is_file():
            raise PipelineError(
                f"{onnx}: not found; run the evaluate stage, which exports it (dvc repro)"
            )
        return onnx, export.Session(onnx)
    if not onnx.is_file():
        return None
    session = export.Session(onnx)
    if model_file.is_file() and session.metadata.get("source_sha256") != export.sha256(model_file):
        return None
    return onnx, session


def classifier(
    model_file: Path, engine: str
) -> tuple[Path, Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """(the model file used, a function from uint8 pictures N×C×H×W to float32 logits N×classes,
    the model's metadata): onnxruntime when `onnx_session` finds an ONNX model (torch is then not
    imported at all), else the torch model."""
    found = onnx_session(model_file, engine)
    if found is not None:
        onnx, session = found
        return onnx, session.logits, session.meta()
    import torch

    from pipeline.core import models

    model, meta = models.load(model_file)
    return model_file, lambda batch: models.logits(model, torch.from_numpy(batch)).numpy(), meta


def given_classifier(
    model_file: Path, engine: str
) -> tuple[Path, Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """`classifier`, its errors about a model file the user named (not the default, whose errors
    say which stage makes it) starting with `--model`; a named file that is not there is "no such
    file", not a stage to run."""
    if model_file == paths.MODEL:
        return classifier(model_file, engine)
    if model_file.is_dir():
        raise PipelineError(f"--model {model_file}: a folder, not a model file")
    if not model_file.exists():
        raise PipelineError(f"--model {model_file}: no such file")
    try:
        return classifier(model_file, engine)
    except PipelineError as exc:
        if str(exc).startswith(f"{model_file}:"):
            raise PipelineError(f"--model {exc}") from None
        raise


@click.command(
    epilog="Exit status: 0 every picture classified; 1 some files could not be read (each named "
    "on stderr, one line each) and the others were classified; 2 bad input (a missing file or "
    "model, no picture readable)."
)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model_file",
    type=click.Path(path_type=Path),
    default=paths.MODEL,
    show_default=True,
    help="model.pt, or an exported .onnx file.",
)
@click.option(
    "--engine",
    type=click.Choice(["auto", "onnx", "torch"]),
    default="auto",
    show_default=True,
    help="auto: the ONNX model beside model.pt through onnxruntime when the evaluate stage "
    "exported it from this model.pt, else torch.",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Classes shown per image.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@reports_errors
def main(
    inputs: tuple[Path, ...], model_file: Path, engine: str, top_k: int, as_json: bool
) -> None:
    """Classify picture files (or every picture in the given folders) with the trained model.

    A file that cannot be read is named on stderr and skipped; the others are classified."""
    from pipeline.core.export import softmax

    files = image_files(list(inputs))
    used, logits, meta = given_classifier(model_file, engine)
    names = meta["class_names"]
    files, batch, unreadable = read_images(files, meta["in_channels"], meta["image_size"])
    if not files:
        for line in unreadable[:-1]:
            click.echo(f"error: {line}", err=True)
        raise PipelineError(unreadable[-1])
    probs = softmax(logits(batch))
    # Stable: classes of equal probability in class order, as torch.topk lists them.
    top = np.argsort(-probs, axis=1, kind="stable")[:, : min(top_k, len(names))]
    results = [
        {
            "path": str(f),
            "predictions": [{"class": names[i], "probability": float(ps[i])} for i in idx],
        }
        for f, ps, idx in zip(files, probs, top.tolist(), strict=True)
    ]
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        print_table(results, used, meta)
    for line in unreadable:
        click.echo(f"skipped: {line}", err=True)
    if unreadable:
        sys.exit(EXIT_SKIPPED)


def print_table(results: list[dict[str, Any]], model_file: Path, meta: dict[str, Any]) -> None:
    """The model's provenance, then one row per picture: its top classes with their
    probabilities."""
    engine = "onnxruntime" if model_file.suffix == ".onnx" else "torch"
    run_file = model_file.parent / paths.RUN_FILE.name
    run = json.loads(run_file.read_text()).get("run_id", "?") if run_file.is_file() else "unknown"
    click.echo(
        f"# {model_file}: {meta['architecture']} trained on {meta['dataset']}, MLflow run {run} "
        f"({engine})"
    )
    width = max(len(r["path"]) for r in [*results, {"path": "image"}])
    ranks = "  ".join(f"class {i + 1} (probability)" for i in range(len(results[0]["predictions"])))
    click.echo(f"{'image':<{width}}  {ranks}")
    for r in results:
        preds = "  ".join(f"{p['class']} {p['probability']:.3f}" for p in r["predictions"])
        click.echo(f"{r['path']:<{width}}  {preds}")


if __name__ == "__main__":
    main()
