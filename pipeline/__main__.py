"""`python -m pipeline`: every stage, tool and team command as one Click group (`--help` lists
them).

The stages are what `dvc repro` runs (`pipeline.stages`); the tools are clients of their results
(`pipeline_tools`); the team commands are what a team adds (`pipeline_team`). Each command's module
is imported only when that command runs, so `--help` and a mistyped command answer at once.
"""

from __future__ import annotations

import importlib

import click

# name -> (module, one-line help). Stage commands carry their dvc.yaml stage names
# (tests/test_layout.py).
STAGES = {
    "download": ("pipeline.stages.download", "Stage: the dataset's files into data/raw."),
    "normalization-stats": (
        "pipeline.stages.normalization_stats",
        "Stage: per-channel statistics into data/stats.json.",
    ),
    "weights": (
        "pipeline.stages.weights",
        "Stage: the starting weights (train.weights) into models/start.pt.",
    ),
    "train": ("pipeline.stages.train", "Stage: fit the model, track the run in MLflow."),
    "evaluate": (
        "pipeline.stages.evaluate",
        "Stage: test metrics, plots, models/model.onnx checked on the test split; into the run.",
    ),
}
TOOLS = {
    "predict": ("pipeline_tools.predict", "Classify image files with the trained model."),
    "mistakes": (
        "pipeline_tools.mistakes",
        "The pictures to look at: highest loss, or confidently wrong, first.",
    ),
    "compare": ("pipeline_tools.compare", "MLflow compare-view URLs and a table of what differs."),
    "report": ("pipeline_tools.report", "Markdown report of what changed against a revision."),
    "baseline": ("pipeline_tools.baseline", "Back to the committed params, lock and results."),
    "preset": ("pipeline_tools.preset", "Run a partial params file as a named experiment."),
    "repro-check": (
        "pipeline_tools.repro_check",
        "Does this commit reproduce? Two clean runs compared.",
    ),
    "reproduce": (
        "pipeline_tools.reproduce",
        "Re-create a logged MLflow run and compare its metrics.",
    ),
    "params-reference": (
        "pipeline_tools.params_reference",
        "Print the parameter reference (docs/parameters.md).",
    ),
    "plots-template": (
        "pipeline_tools.plots_template",
        "Bundle Vega into DVC's offline plots page.",
    ),
    "dvc-deps": (
        "pipeline_tools.dvc_deps",
        "Write each stage's code deps in dvc.yaml from the import graph.",
    ),
}
TEAM = {
    "stack": (
        "pipeline_team.stack.commands",
        "Team stack: PostgreSQL, S3 and an authenticated MLflow server.",
    ),
    "sweep": ("pipeline_team.sweep.command", "Optuna sweep whose trials are DVC experiments."),
}
COMMANDS = {**STAGES, **TOOLS, **TEAM}


class Commands(click.Group):
    """A group whose commands are imported when they run (Click's documented lazy-loading
    pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return importlib.import_module(COMMANDS[name][0]).main

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for title, group in (
            ("Stages (dvc repro runs these)", STAGES),
            ("Tools", TOOLS),
            ("Team", TEAM),
        ):
            with formatter.section(title):
                formatter.write_dl([(name, text) for name, (_, text) in group.items()])


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Reproducible image classification: the DVC stages (run them with `dvc repro`), the tools and
    the team commands."""


if __name__ == "__main__":
    main()
