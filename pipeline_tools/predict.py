"""`python -m pipeline predict PATH…`: top-k classes with probabilities for image files or
folders."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.cli import reports_errors
from pipeline.core import paths
from pipeline.core.errors import PipelineError
from pipeline.core.images import SUFFIXES


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


def read_image(path: Path, channels: int, size: int):  # -> torch.Tensor (C×H×W uint8)
    """A picture as the model expects it: through the very function the download stage decodes a
    folder's pictures with (core.images.read: EXIF orientation, colour mode, resize and centre crop
    as torchvision)."""
    import torch

    from pipeline.core.images import ImageError, read

    try:
        return torch.from_numpy(read(path, channels, size))
    except ImageError as exc:
        raise PipelineError(f"{path}: not a readable image ({exc})") from None


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--model", "model_file", type=click.Path(path_type=Path), default=paths.MODEL, show_default=True
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
def main(inputs: tuple[Path, ...], model_file: Path, top_k: int, as_json: bool) -> None:
    """Classify picture files (or every picture in the given folders) with the trained model."""
    files = image_files(list(inputs))
    import torch

    from pipeline.core import models

    model, meta = models.load(model_file)
    names = meta["class_names"]
    batch = torch.stack([read_image(f, meta["in_channels"], meta["image_size"]) for f in files])
    probs = torch.softmax(models.logits(model, batch), dim=1)
    top = probs.topk(min(top_k, len(names)), dim=1)
    results = [
        {
            "path": str(f),
            "predictions": [
                {"class": names[i], "probability": float(p)}
                for p, i in zip(ps.tolist(), idx.tolist(), strict=False)
            ],
        }
        for f, ps, idx in zip(files, top.values, top.indices, strict=False)
    ]
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    run_file = model_file.parent / paths.RUN_FILE.name
    run = json.loads(run_file.read_text()).get("run_id", "?") if run_file.is_file() else "unknown"
    click.echo(
        f"# {model_file}: {meta['architecture']} trained on {meta['dataset']}, MLflow run {run}"
    )
    width = max(len(r["path"]) for r in [*results, {"path": "image"}])
    ranks = "  ".join(f"class {i + 1} (probability)" for i in range(len(results[0]["predictions"])))
    click.echo(f"{'image':<{width}}  {ranks}")
    for r in results:
        preds = "  ".join(f"{p['class']} {p['probability']:.3f}" for p in r["predictions"])
        click.echo(f"{r['path']:<{width}}  {preds}")


if __name__ == "__main__":
    main()
