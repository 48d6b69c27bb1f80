"""Speed and memory of the pipeline against the tutorials' loop, side by side in one invocation, per
CPU family.

Run from the project root after `make repro` (it reads data/raw and data/stats.json; everything that
writes
runs in temporary folders):

    python benchmarks/bench.py            # full: about half an hour on 2 cores (the folder figures
    are most of it) python benchmarks/bench.py --quick    # smoke run of a few minutes (figures are
    rough) python benchmarks/bench.py --page     # only rewrite docs/speed.md from
    benchmarks/results.json

    python benchmarks/bench.py --only transfer --out t.json  # transfer learning alone (about an
    hour on 2 cores; docs/transfer.md), without --out merged into results.json

Prints the figures beside their targets on stderr and the JSON on stdout; keeps one entry per CPU
family (its flags) in benchmarks/results.json, and writes docs/speed.md from all of them. Where CUDA
is present, the same figures are taken on the GPU (the defaults pick it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

sys.path.insert(
    0, str(Path(__file__).resolve().parent)
)  # run as a script: its siblings are modules

import folders
import measure
import speed_page
import transfer
import tutorial
from common import ROOT, machine, ratio, timed

from pipeline.core import normalization, paths
from pipeline.core.params import load_params

RESULTS = ROOT / "benchmarks/results.json"
PRESET = ROOT / "presets/accurate.yaml"


def run_all(project: Path, quick: bool, with_folders: bool) -> dict[str, Any]:
    """Every figure, in one invocation (see the module docstring)."""
    norm = normalization.load(paths.STATS, "mnist", 1)
    m = machine()
    r: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "machine": m,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    small = {"data": {"limit": 2000, "val_size": 500}, "train": {"epochs": 1}} if quick else {}
    if not quick:
        r["default_dvc_repro"] = timed(
            "default dvc repro (data present)", lambda: measure.default_repro(project)
        )
        r["loop_share"] = measure.loop_share(r["default_dvc_repro"], m)
        r["time_to_99"] = {
            "tutorial": timed(
                "tutorials' loop to 99 % test accuracy",
                lambda: tutorial.to_target(paths.RAW, norm.mean[0], norm.std[0], 6),
            )
        }
        d = r["default_dvc_repro"]
        ours = d["seconds"] if d["test_accuracy"] >= tutorial.TARGET else None
        r["time_to_99"].update(
            ours_seconds=ours, ratio=ratio(r["time_to_99"]["tutorial"]["seconds"], ours)
        )
    r["stages"] = timed(
        "each stage, as DVC runs it", lambda: measure.stage_costs(project, 1 if quick else 2, small)
    )
    r["precision"] = timed(
        "fp32 and bf16 training rates",
        lambda: measure.step_rates(5 if quick else 30, 1 if quick else 3),
    )
    r["throughput"] = timed(
        "training throughput", lambda: measure.throughput(20 if quick else 300, 1 if quick else 3)
    )
    r["tracking"] = timed(
        "tracking process vs in-process vs untracked",
        lambda: measure.tracking_costs(project, small, 1 if quick else 2),
    )
    r["internals"] = timed(
        "library internals' seconds", lambda: measure.internals(1 if quick else 3)
    )
    if not quick:
        r["preset"] = timed(
            "preset accurate (train + evaluate)", lambda: measure.preset(project, PRESET)
        )
    if with_folders:
        r["folders"] = timed(
            "your own pictures: decoding, no-op repro, memory, MNIST as a folder",
            lambda: folders.measure(project),
        )
    return r


def keep(results: dict[str, Any]) -> dict[str, Any]:
    """benchmarks/results.json with `results` as its CPU family's entry (a quick run never replaces
    a full one)."""
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    families = stored.get("families", {})
    family = results["machine"]["flags"] + (" + cuda" if results["machine"]["cuda"] else "")
    if results["mode"] == "full" or families.get(family, {}).get("mode") != "full":
        families[family] = results
    return {"families": families}


def only(section: str, project: Path, quick: bool) -> dict[str, Any]:
    """One section alone (`transfer`: benchmarks/transfer.py), under the machine's description."""
    out = {"mode": "quick" if quick else "full", "machine": machine()}
    out["date"] = time.strftime("%Y-%m-%d %H:%M")
    out[section] = timed(section, lambda: transfer.measure(project, quick))
    return out


def merge_section(results: dict[str, Any], section: str) -> dict[str, Any]:
    """benchmarks/results.json with `results[section]` put into its CPU family's entry, every other
    figure kept (a quick section never replaces a full one)."""
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    families = stored.setdefault("families", {})
    family = results["machine"]["flags"] + (" + cuda" if results["machine"]["cuda"] else "")
    entry = families.setdefault(family, {"mode": results["mode"], "machine": results["machine"]})
    old = entry.get(section, {})
    if results["mode"] == "full" or old.get("mode") != "full":
        entry[section] = {"mode": results["mode"], "date": results["date"], **results[section]}
    return stored


def summary(r: dict[str, Any]) -> list[str]:
    """The figures beside their targets, one line each (the JSON has everything)."""
    return speed_page.rows(r)


@click.command()
@click.option(
    "--quick",
    is_flag=True,
    help="A smoke run of a few minutes: tiny stages, fewer rounds, no end-to-end runs.",
)
@click.option(
    "--folders/--no-folders",
    "with_folders",
    default=None,
    help="Measure your-own-pictures figures too [default: in a full run].",
)
@click.option(
    "--page", is_flag=True, help="Only rewrite docs/speed.md from benchmarks/results.json."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the JSON here instead of keeping it in "
    "benchmarks/results.json (and leave docs/speed.md alone).",
)
@click.option(
    "--project",
    type=click.Path(path_type=Path, file_okay=False),
    default=ROOT,
    show_default=True,
    help=(
        "Project (a git repository) whose data/raw and data/stats.json are used "
        "(after `dvc repro`)."
    ),
)
@click.option(
    "--only",
    "only_section",
    type=click.Choice(["transfer"]),
    default=None,
    help="Measure one section alone (transfer: docs/transfer.md's figures), merged into "
    "benchmarks/results.json without touching the other figures.",
)
@click.option("--stage-once", type=click.Choice(["train", "evaluate"]), hidden=True)
@click.option("--tracker", type=click.Choice(["inprocess", "none"]), hidden=True)
def main(
    quick: bool,
    with_folders: bool | None,
    page: bool,
    out: Path | None,
    project: Path,
    only_section: str | None,
    stage_once: str | None,
    tracker: str | None,
) -> None:
    """Measure and print every figure; keep them per CPU family and write docs/speed.md."""
    if stage_once:  # one side of the tracking measurement, in a process of its own
        return once(stage_once, tracker or "none")
    if page:
        speed_page.write(json.loads(RESULTS.read_text()))
        return
    project = project.resolve()
    os.chdir(project)
    if only_section:
        r = only(only_section, project, quick)
        if out is not None:
            out.write_text(json.dumps(r, indent=2) + "\n")
        else:
            RESULTS.write_text(json.dumps(merge_section(r, only_section), indent=2) + "\n")
        click.echo(json.dumps(r, indent=2))
        return
    for needed in (paths.RAW, paths.STATS):
        if not needed.exists():
            raise click.ClickException(
                f"{project / needed} is missing: run `dvc repro` (or its first two stages) first"
            )
    if load_params(paths.PARAMS).data.dataset != "mnist":
        raise click.ClickException("the benchmark compares on MNIST: set data.dataset to mnist")
    r = run_all(project, quick, not quick if with_folders is None else with_folders)
    if out is not None:
        out.write_text(json.dumps(r, indent=2) + "\n")
    else:
        stored = keep(r)
        RESULTS.write_text(json.dumps(stored, indent=2) + "\n")
        speed_page.write(stored)
    click.echo("\n".join(summary(r)), err=True)  # stdout stays pure JSON for scripts
    click.echo(json.dumps(r, indent=2))


def once(stage: str, tracker: str) -> None:
    """The workflow of `stage` with MLflow's client in this process (no tracking process), or
    untracked."""
    from pipeline.core import cpu

    params = load_params(paths.PARAMS)
    cpu.pin_portable(params.train.portable)  # as the stages do (raises once torch is loaded)
    from pipeline.core import evaluator, trainer
    from pipeline.core.tracking import Tracker
    from pipeline.core.tracking.client import MlflowTracker

    chosen = MlflowTracker() if tracker == "inprocess" else Tracker()
    if stage == "train":
        trainer.train(params, chosen)
    else:
        evaluator.evaluate(params, chosen)


if __name__ == "__main__":
    main()
