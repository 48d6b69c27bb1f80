"""Speed and memory of the pipeline against the tutorials' loop, side by side in one invocation, per
CPU family.

Run from the project root after `make repro` (it reads data/raw and data/stats.json; everything that
writes runs in temporary folders):

    python benchmarks/bench.py                  # full: about half an hour on 2 cores
    python benchmarks/bench.py --quick          # smoke run of a few minutes (figures are rough)
    python benchmarks/bench.py --only predict   # one section (repeatable), merged into the entry
    python benchmarks/bench.py --page           # only rewrite docs/speed.md from results.json

    python benchmarks/bench.py --only transfer --out t.json  # transfer learning alone (about an
    hour on 2 cores; docs/transfer.md), without --out merged into results.json

Prints the figures beside their targets on stderr and the JSON on stdout; keeps one entry per CPU
family (its flags) in benchmarks/results.json, and writes docs/speed.md from all of them. Where CUDA
is present, the same figures are taken on the GPU (the defaults pick it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

sys.path.insert(
    0, str(Path(__file__).resolve().parent)
)  # run as a script: its siblings are modules

import folders
import measure
import predicting
import speed_page
import transfer
import tutorial
from common import ROOT, machine, ratio, timed

from pipeline.core import normalization, paths
from pipeline.core.params import load_params

RESULTS = ROOT / "benchmarks/results.json"
PRESET = ROOT / "presets/accurate.yaml"


# Every section, in the order a run takes them; --only picks some (a partial run).
SECTIONS = (
    "repro",
    "growth",
    "stages",
    "precision",
    "throughput",
    "tracking",
    "internals",
    "preset",
    "folders",
    "predict",
)
FULL_ONLY = ("repro", "growth", "preset")  # a quick run skips them unless --only names them
ENTRY_KEYS = ("mode", "machine", "date", "sections", "later")  # the rest are sections' figures


@dataclasses.dataclass(frozen=True)
class Run:
    """What every section's measurement is given."""

    project: Path
    quick: bool
    machine: dict[str, Any]
    trained: Path | None = None  # a finished project for the predict section

    @property
    def small(self) -> dict[str, Any]:
        """Parameter overrides of a quick run: tiny stages."""
        if not self.quick:
            return {}
        return {"data": {"limit": 2000, "val_size": 500}, "train": {"epochs": 1}}

    def rounds(self, quick: int, full: int) -> int:
        return quick if self.quick else full


def _repro(run: Run) -> dict[str, Any]:
    """The default `dvc repro`, the loop's share of the CPU's peak, time to 99 % against the
    tutorials' loop."""
    norm = normalization.load(paths.STATS, "mnist", 1)
    d = timed("default dvc repro (data present)", lambda: measure.default_repro(run.project))
    t = timed(
        "tutorials' loop to 99 % test accuracy",
        lambda: tutorial.to_target(paths.RAW, norm.mean[0], norm.std[0], 6),
    )
    ours = d["seconds"] if d["test_accuracy"] >= tutorial.TARGET else None
    return {
        "default_dvc_repro": d,
        "loop_share": measure.loop_share(d, run.machine),
        "time_to_99": {"tutorial": t, "ours_seconds": ours, "ratio": ratio(t["seconds"], ours)},
    }


def _measurements(run: Run) -> dict[str, tuple[str, Callable[[], dict[str, Any]]]]:
    """Each section but `repro`: (what it says on stderr, its measurement)."""
    n = run.rounds
    return {
        "growth": (
            f"default dvc repro -f at {measure.GROWTH_BASE} (before issues 29-31) and now",
            lambda: measure.repro_growth(run.project, n(1, 3)),
        ),
        "stages": (
            "each stage, as DVC runs it",
            lambda: measure.stage_costs(run.project, n(1, 2), run.small),
        ),
        "precision": (
            "fp32 and bf16 training rates",
            lambda: measure.step_rates(n(5, 30), n(1, 3)),
        ),
        "throughput": ("training throughput", lambda: measure.throughput(n(20, 300), n(1, 3))),
        "tracking": (
            "tracking process vs in-process vs untracked",
            lambda: measure.tracking_costs(run.project, run.small, n(1, 2)),
        ),
        "internals": ("library internals' seconds", lambda: measure.internals(n(1, 3))),
        "preset": (
            "preset accurate (train + evaluate)",
            lambda: measure.preset(run.project, PRESET),
        ),
        "folders": (
            "your own pictures: decoding, no-op repro, memory, MNIST as a folder",
            lambda: folders.measure(run.project),
        ),
        "predict": (
            "predict cold start, ONNX vs torch, 1 and 1,000 pictures",
            lambda: predicting.measure(run.project, run.trained, n(1, 3)),
        ),
    }


def run_all(run: Run, with_folders: bool, only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every figure of the chosen sections (all that fit the mode without `only`), in one
    invocation."""
    chosen = set(only) or {
        s
        for s in SECTIONS
        if not (run.quick and s in FULL_ONLY) and (with_folders or s != "folders")
    }
    r: dict[str, Any] = {
        "mode": "quick" if run.quick else "full",
        "machine": run.machine,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if only:
        r["sections"] = [s for s in SECTIONS if s in chosen]
    measurements = _measurements(run)
    for name in SECTIONS:
        if name in chosen and name == "repro":
            r.update(_repro(run))
        elif name in chosen:
            r[name] = timed(*measurements[name])
    return r


def keep(results: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """`stored` (benchmarks/results.json) with `results` as its CPU family's entry. A quick run
    never replaces a full one; a partial run (--only) replaces only its sections' figures in an
    entry of its mode or a quick one, and says when and at which commit it took them."""
    families = dict(stored.get("families", {}))
    family = results["machine"]["flags"] + (" + cuda" if results["machine"]["cuda"] else "")
    entry = families.get(family)
    quick_over_full = results["mode"] == "quick" and (entry or {}).get("mode") == "full"
    if "sections" not in results or entry is None:
        if not quick_over_full:
            families[family] = results
    elif not quick_over_full:
        entry = json.loads(json.dumps(entry))  # a copy: `stored` stays as given
        when = {k: results[k] for k in ("mode", "date")} | {"commit": results["machine"]["commit"]}
        for key in (k for k in results if k not in ENTRY_KEYS):
            entry[key] = results[key]
            entry.setdefault("later", {})[key] = when
        families[family] = entry
    return {"families": families}


def transfer_alone(project: Path, quick: bool) -> dict[str, Any]:
    """The transfer section alone (benchmarks/transfer.py), under the machine's description."""
    out = {"mode": "quick" if quick else "full", "machine": machine()}
    out["date"] = time.strftime("%Y-%m-%d %H:%M")
    out["transfer"] = timed("transfer", lambda: transfer.measure(project, quick))
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
    type=click.Choice((*SECTIONS, "transfer")),
    multiple=True,
    help="Measure only this section (repeatable); its figures replace that section's in the "
    "CPU family's entry, the others stay (transfer: docs/transfer.md's figures, alone).",
)
@click.option(
    "--trained",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="A finished project (after `dvc repro`, models/model.onnx present) for the predict "
    "section  [default: `dvc repro` in a scratch clone of --project].",
)
@click.option("--stage-once", type=click.Choice(["train", "evaluate"]), hidden=True)
@click.option("--tracker", type=click.Choice(["inprocess", "none"]), hidden=True)
def main(
    quick: bool,
    with_folders: bool | None,
    page: bool,
    out: Path | None,
    project: Path,
    only: tuple[str, ...],
    trained: Path | None,
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
    if "transfer" in only:
        r = transfer_alone(project, quick)
        if out is not None:
            out.write_text(json.dumps(r, indent=2) + "\n")
        else:
            RESULTS.write_text(json.dumps(merge_section(r, "transfer"), indent=2) + "\n")
        click.echo(json.dumps(r, indent=2))
        return
    check_project(project, needs_data=set(only) != {"predict"})
    run = Run(project, quick, machine(), trained.resolve() if trained else None)
    r = run_all(run, not quick if with_folders is None else with_folders, only)
    if out is not None:
        out.write_text(json.dumps(r, indent=2) + "\n")
    else:
        stored = keep(r, json.loads(RESULTS.read_text()) if RESULTS.exists() else {})
        RESULTS.write_text(json.dumps(stored, indent=2) + "\n")
        speed_page.write(stored)
    click.echo("\n".join(summary(r)), err=True)  # stdout stays pure JSON for scripts
    click.echo(json.dumps(r, indent=2))


def check_project(project: Path, needs_data: bool) -> None:
    """ClickException unless `project` (the working directory) is on MNIST and, with `needs_data`,
    has its data/raw and data/stats.json."""
    for needed in (paths.RAW, paths.STATS) if needs_data else ():
        if not needed.exists():
            raise click.ClickException(
                f"{project / needed} is missing: run `dvc repro` (or its first two stages) first"
            )
    if load_params(paths.PARAMS).data.dataset != "mnist":
        raise click.ClickException("the benchmark compares on MNIST: set data.dataset to mnist")


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
