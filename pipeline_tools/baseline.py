"""`python -m pipeline baseline`: put the workspace back on the committed results, deleting nothing.

`git checkout … && dvc checkout` is the usual answer, but on a machine whose cache lacks the
committed model (any fresh clone: models are not in git) `dvc checkout` removes the workspace model
and cannot restore it. This restores the git-tracked results and parameters, takes each DVC-cached
output from the local cache only where the cache holds the committed copy, and otherwise leaves the
file alone and says how to get the committed one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import click

from pipeline.cli import reports_errors
from pipeline.core import paths
from pipeline.core.errors import PipelineError
from pipeline.core.repo import clean_env, executable, git
from pipeline.core.yamlio import read_yaml

LOCK = Path("dvc.lock")
IN_GIT = (
    paths.PARAMS,
    LOCK,
    paths.RUN_FILE,
    paths.TRAIN_METRICS,
    paths.TRAIN_PLOT,
    paths.TRAIN_SAMPLES_PLOT,
    paths.EVAL_METRICS,
    paths.CONFUSION_PLOT,
    paths.PER_CLASS_PLOT,
    paths.ROC_PLOT,
    paths.PRECISION_RECALL_PLOT,
    paths.TEST_SAMPLES_PLOT,
    paths.PREDICTIONS,
    paths.EXPORT_METRICS,
)
IN_CACHE = (paths.RAW, paths.STATS, paths.START, paths.MODEL, paths.ONNX_MODEL)


def cached_outputs(lock_text: str, source: str = "dvc.lock") -> dict[str, str]:
    """{output path: md5} of the DVC-cached outputs in a dvc.lock text. Raises PipelineError naming
    `source` when it is not valid YAML or not shaped as DVC writes it."""
    wanted = {p.as_posix() for p in IN_CACHE}
    lock = read_yaml(lock_text, source) or {}
    stages = lock.get("stages", {}) if isinstance(lock, dict) else None
    if not isinstance(stages, dict) or not all(isinstance(s, dict) for s in stages.values()):
        raise PipelineError(f"{source}: not a DVC lock file (`stages:` mapping names to entries)")
    out = {}
    for stage in stages.values():
        outs = stage.get("outs", [])
        for entry in outs if isinstance(outs, list) else []:
            if isinstance(entry, dict) and entry.get("path") in wanted and entry.get("md5"):
                out[entry["path"]] = entry["md5"]
    return out


def in_cache(cache: Path, md5: str) -> bool:
    """Whether DVC's cache (3.x layout) holds the object `md5` (a folder's .dir listing counts for
    the folder)."""
    return (cache / "files" / "md5" / md5[:2] / md5[2:]).is_file()


@click.command()
@click.option(
    "--rev", default="HEAD", show_default=True, help="The commit whose results to return to."
)
@reports_errors
def main(rev: str) -> None:
    """Restore params.yaml, dvc.lock and the results of REV; the model and data only from the local
    cache."""
    root = Path(git("rev-parse", "--show-toplevel"))
    committed = [
        p.as_posix()
        for p in IN_GIT
        if git("ls-tree", "--name-only", rev, "--", p.as_posix(), cwd=root)
    ]
    if not committed:
        raise PipelineError(f"--rev {rev}: no committed results there")
    # Read before anything is restored: a damaged lock stops the tool with the work tree as it was.
    outputs = cached_outputs(git("show", f"{rev}:{LOCK.as_posix()}", cwd=root), f"{LOCK} at {rev}")
    git("checkout", rev, "--", *committed, cwd=root)
    click.echo(f"restored from {rev}: {', '.join(committed)}")
    cache = Path(
        subprocess.run(
            [executable("dvc"), "cache", "dir"],
            cwd=root,
            env=clean_env(),
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        or root / ".dvc" / "cache"
    )
    restorable, missing = [], []
    for path, md5 in outputs.items():
        (restorable if in_cache(cache, md5) else missing).append(path)
    if restorable:
        proc = subprocess.run(
            [executable("dvc"), "checkout", *restorable],
            cwd=root,
            env=clean_env(),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise PipelineError(
                f"dvc checkout {' '.join(restorable)}: {proc.stderr.strip().splitlines()[-1:]}"
            )
        click.echo(f"restored from the DVC cache: {', '.join(restorable)}")
    for path in missing:
        click.echo(
            f"{path}: the committed copy is in no cache on this machine; the file here is left as "
            "it is. "
            "`dvc repro` recreates it (or `dvc pull`, once a remote holds it); `dvc status` shows "
            "what differs."
        )
