"""`python -m pipeline repro-check`: does this commit reproduce, on this machine and against other
CPU families?

Clones the current commit twice and runs the pipeline in each on the small CI configuration
(`repro/params-ci.yaml`). The contract it checks (docs/reproducibility.md says why it is this one):
- the two runs on this machine give byte-identical models and identical metrics;
- within a CPU family: the model's sha256 equals the one recorded for this family's flags in
  `repro/model-hashes.json` (when one is recorded);
- across families: the metrics are within `--tolerance` of `repro/reference.json`. Models of other
  families are shown, not required equal: the same portable run gave one model on Intel Ice Lake and
  Sapphire Rapids alike and another on an AMD EPYC (whose MKL takes other code paths), with equal
  metrics.
It prints the CPU flags it ran on and, on failure, what differed.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import click

from pipeline.cli import reports_errors
from pipeline.core import cpu, paths
from pipeline.core.errors import PipelineError
from pipeline.core.params import merge, parse_params
from pipeline.core.repo import git
from pipeline.core.yamlio import read_mapping
from pipeline_tools import rerun

OTHER_BYTES = "other bytes (equal only within a family; metrics are compared)"
CONFIG = Path("repro/params-ci.yaml")
REFERENCE = Path("repro/reference.json")
HASHES = Path("repro/model-hashes.json")  # {CPU flags: sha256 of models/model.pt}


def report(
    first: rerun.Outcome,
    second: rerun.Outcome,
    reference: dict[str, float] | None,
    tolerance: float,
) -> tuple[list[list[str]], list[str]]:
    """Table rows (metrics, then file hashes) and the metrics further than `tolerance` from the
    reference. Without a reference (None: a --config run) a metric's status says whether the two
    runs agree."""
    rows, off_reference = [], []
    for key in sorted(first.metrics):
        ref = reference.get(key) if reference is not None else None
        delta = abs(first.metrics[key] - ref) if ref is not None else None
        ok = delta is not None and delta <= tolerance
        if ref is not None and not ok:
            off_reference.append(key)
        if reference is None:
            status = "same" if first.metrics[key] == second.metrics.get(key) else "DIFFERENT"
        else:
            status = "ok" if ok else ("no reference" if ref is None else "OFF")
        rows.append(
            [
                key,
                f"{first.metrics[key]:.6f}",
                f"{second.metrics.get(key, float('nan')):.6f}",
                f"{ref:.6f}" if ref is not None else "-",
                f"{delta:.6f}" if delta is not None else "-",
                status,
            ]
        )
    for path, digest in first.hashes.items():
        same = digest == second.hashes.get(path)
        rows.append(
            [
                path,
                digest[:12],
                second.hashes.get(path, "missing")[:12],
                "",
                "",
                "same" if same else "DIFFERENT",
            ]
        )
    return rows, off_reference


def hash_check(model_sha256: str, recorded: dict[str, str], here: str) -> tuple[list[str], bool]:
    """(a line per recorded CPU family, whether this family's recorded hash differs from this
    model's). Other families' hashes are shown for what they are: exact equality is promised within
    a family only."""
    lines = []
    for flags, digest in sorted(recorded.items()):
        same = digest == model_sha256
        if flags == here:
            lines.append(
                f"  recorded on [{flags}] (this CPU family): {digest[:16]}… "
                f"{'same' if same else 'DIFFERENT'}"
            )
        else:
            lines.append(
                f"  recorded on [{flags}] (another family): {digest[:16]}… "
                f"{'same' if same else OTHER_BYTES}"
            )
    if here not in recorded:
        lines.append(
            f"  nothing recorded on [{here}] yet: record {model_sha256[:16]}… with --record-hash"
        )
    return lines, here in recorded and recorded[here] != model_sha256


@click.command()
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=0.002,
    show_default=True,
    help="Largest absolute difference from the reference accepted for any metric.",
)
@click.option(
    "--update-reference",
    is_flag=True,
    help="Write this run's metrics as the reference and its model hash as the only recorded one.",
)
@click.option(
    "--record-hash", is_flag=True, help="Add this CPU family's model hash to the recorded ones."
)
@click.option("--keep", is_flag=True, help="Keep the temporary clones (their paths are printed).")
@click.option(
    "--config",
    type=click.Path(path_type=Path),
    default=None,
    help=f"Parameters to merge into params.yaml instead of {CONFIG} (e.g. a fine-tuning run's); "
    "the two runs are compared with each other only.",
)
@reports_errors
def main(
    tolerance: float, update_reference: bool, record_hash: bool, keep: bool, config: Path | None
) -> None:
    """Run the pipeline twice from clean clones of HEAD; compare hashes, metrics and the
    reference."""
    here = cpu.flags()
    root = Path(git("rev-parse", "--show-toplevel", cwd=Path.cwd()))
    if config is not None and (update_reference or record_hash):
        raise PipelineError(
            f"--config: the reference and the recorded hashes are those of {CONFIG}; drop "
            "--update-reference/--record-hash"
        )
    if config is not None and not config.is_file():
        raise PipelineError(f"--config: {config}: no such file")
    if git("status", "--porcelain", "--untracked-files=no", cwd=root):
        raise PipelineError(
            "the work tree has uncommitted changes; commit or stash them (after a dvc exp run, "
            "`python -m pipeline baseline` puts the committed results back): only a commit can be "
            "checked"
        )
    commit = git("rev-parse", "HEAD", cwd=root)
    first, second = two_runs(root, commit, here, keep, (config or root / CONFIG).absolute())
    reference = json.loads((root / REFERENCE).read_text()) if (root / REFERENCE).is_file() else {}
    # The reference is the CI configuration's: a --config run is compared with itself only.
    rows, off_reference = report(first, second, None if config else reference, tolerance)
    click.echo(
        rerun.table(
            rows, ["metric / file", "run 1", "run 2", "reference", "|run1 - ref|", "status"]
        )
    )
    diff = first.differences(second)
    if diff:
        click.echo(f"NOT REPRODUCIBLE: two runs of commit {commit[:12]} differ:", err=True)
        for line in diff:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    click.echo(f"reproducible: both runs of {commit[:12]} gave identical models and metrics")
    if config is not None:
        return
    model = first.hashes[paths.MODEL.as_posix()]
    recorded = json.loads((root / HASHES).read_text()) if (root / HASHES).is_file() else {}
    if update_reference or record_hash:
        record(root, first, here, recorded, update_reference)
        return
    if not reference:
        raise PipelineError(
            f"{REFERENCE}: missing; create it with --update-reference and commit it"
        )
    lines, differs = hash_check(model, recorded, here)
    click.echo(f"model hash {model[:16]}… against {HASHES}:\n" + "\n".join(lines))
    if differs:
        click.echo(
            f"NOT REPRODUCED IN THIS FAMILY: the model differs from the one recorded on [{here}]",
            err=True,
        )
    if off_reference:
        click.echo(f"OFF REFERENCE (tolerance {tolerance}): {', '.join(off_reference)}", err=True)
    if differs or off_reference:
        sys.exit(1)
    click.echo(
        f"matches {REFERENCE} within {tolerance}"
        + (f" and the hash recorded on [{here}]" if here in recorded else "")
    )


def record(
    root: Path,
    run: rerun.Outcome,
    here: str,
    recorded: dict[str, str],
    update_reference: bool,
) -> None:
    """Write `run`'s model hash for this CPU family into HASHES (the only one with
    `update_reference`, which also writes its metrics as the REFERENCE)."""
    model = run.hashes[paths.MODEL.as_posix()]
    if update_reference:
        (root / REFERENCE).write_text(json.dumps(run.metrics, indent=2, sort_keys=True) + "\n")
        click.echo(f"wrote {REFERENCE}")
    recorded = {here: model} if update_reference else {**recorded, here: model}
    (root / HASHES).write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    click.echo(f"wrote {HASHES}: {model[:16]}… for [{here}]")


def two_runs(
    root: Path, commit: str, here: str, keep: bool, config: Path
) -> tuple[rerun.Outcome, rerun.Outcome]:
    """The configuration `config` (params.yaml keys; none when the file is missing) run twice, each
    in a clean clone of `commit` (removed unless `keep`)."""
    shown = config.relative_to(root) if config.is_relative_to(root) else config
    override = read_mapping(config, str(shown)) if config.is_file() else {}
    base = read_mapping(root / paths.PARAMS, str(paths.PARAMS))
    portable = parse_params(merge(base, override), source=str(shown)).train.portable
    click.echo(
        f"CPU flags: {here}; configuration {shown}: {'portable' if portable else 'not portable'}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="repro-check-"))
    outcomes = []
    try:
        for i in (1, 2):
            clone = rerun.clone(root, commit, tmp / f"run{i}")
            rerun.write_params(clone, override)
            click.echo(f"run {i}: dvc repro in {clone} ...")
            outcomes.append(rerun.run_pipeline(clone, tmp / f"run{i}.log", click.echo))
    finally:
        if keep:
            click.echo(f"kept the clones in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return outcomes[0], outcomes[1]


if __name__ == "__main__":
    main()
