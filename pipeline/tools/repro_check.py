"""`python -m pipeline repro-check`: does this commit reproduce?

Clones the current commit twice, runs the pipeline in each on the small CI configuration
(`repro/params-ci.yaml`), fails with a diff when model hashes or metrics differ, then compares the
metrics with the committed reference (`repro/reference.json`) within a tolerance, since other CPUs
may round differently in the last bits.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
import yaml

from pipeline.cli import reports_errors
from pipeline.core import rerun
from pipeline.core.errors import PipelineError
from pipeline.core.repo import git

CONFIG = Path("repro/params-ci.yaml")
REFERENCE = Path("repro/reference.json")


def report(
    first: rerun.Outcome, second: rerun.Outcome, reference: dict[str, float], tolerance: float
) -> tuple[list[list[str]], list[str]]:
    """Table rows (metrics, then file hashes) and the metrics further than `tolerance` from the reference."""
    rows, off_reference = [], []
    for key in sorted(first.metrics):
        ref = reference.get(key)
        delta = abs(first.metrics[key] - ref) if ref is not None else None
        ok = delta is not None and delta <= tolerance
        if ref is not None and not ok:
            off_reference.append(key)
        rows.append([key, f"{first.metrics[key]:.6f}", f"{second.metrics.get(key, float('nan')):.6f}",
                     f"{ref:.6f}" if ref is not None else "-", f"{delta:.6f}" if delta is not None else "-",
                     "ok" if ok else ("no reference" if ref is None else "OFF")])
    for path, digest in first.hashes.items():
        same = digest == second.hashes.get(path)
        rows.append([path, digest[:12], second.hashes.get(path, "missing")[:12], "", "", "same" if same else "DIFFERENT"])
    return rows, off_reference


@click.command()
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.002, show_default=True,
              help="Largest absolute difference from the reference accepted for any metric.")
@click.option("--update-reference", is_flag=True, help="Write the metrics of this run as the new reference.")
@click.option("--keep", is_flag=True, help="Keep the temporary clones (their paths are printed).")
@reports_errors
def main(tolerance: float, update_reference: bool, keep: bool) -> None:
    """Run the pipeline twice from clean clones of HEAD; compare hashes, metrics and the reference."""
    root = Path(git("rev-parse", "--show-toplevel", cwd=Path.cwd()))
    if git("status", "--porcelain", "--untracked-files=no", cwd=root):
        raise PipelineError("the work tree has uncommitted changes; commit or stash them: only a commit can be checked")
    commit = git("rev-parse", "HEAD", cwd=root)
    override = yaml.safe_load((root / CONFIG).read_text()) if (root / CONFIG).is_file() else {}
    tmp = Path(tempfile.mkdtemp(prefix="repro-check-"))
    outcomes = []
    for i in (1, 2):
        clone = rerun.clone(root, commit, tmp / f"run{i}")
        rerun.write_params(clone, override)
        click.echo(f"run {i}: dvc repro in {clone} ...")
        outcomes.append(rerun.run_pipeline(clone, tmp / f"run{i}.log"))
    first, second = outcomes

    reference = json.loads((root / REFERENCE).read_text()) if (root / REFERENCE).is_file() else {}
    rows, off_reference = report(first, second, reference, tolerance)
    click.echo(rerun.table(rows, ["metric / file", "run 1", "run 2", "reference", "|run1 - ref|", "status"]))

    if not keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    diff = first.differences(second)
    if diff:
        click.echo(f"NOT REPRODUCIBLE: two runs of commit {commit[:12]} differ:", err=True)
        for line in diff:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    click.echo(f"reproducible: both runs of {commit[:12]} gave identical models and metrics")
    if update_reference:
        (root / REFERENCE).write_text(json.dumps(first.metrics, indent=2, sort_keys=True) + "\n")
        click.echo(f"wrote {REFERENCE}")
        return
    if not reference:
        raise PipelineError(f"{REFERENCE}: missing; create it with --update-reference and commit it")
    if off_reference:
        click.echo(f"OFF REFERENCE (tolerance {tolerance}): {', '.join(off_reference)}", err=True)
        sys.exit(1)
    click.echo(f"matches {REFERENCE} within {tolerance}")


if __name__ == "__main__":
    main()
