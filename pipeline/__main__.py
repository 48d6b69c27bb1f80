"""`python -m pipeline`: every stage and tool as one Click group (`python -m pipeline --help` lists them)."""
from __future__ import annotations

import click

from pipeline.stages import download, evaluate, normalization_stats, train
from pipeline.tools import (
    baseline, compare, params_reference, plots_template, predict, preset, repro_check, report, reproduce, stack,
    sweep,
)

# Stage commands carry their dvc.yaml stage names (tests/test_layout.py checks that they match).
STAGES = {"download": download.main, "normalization-stats": normalization_stats.main,
          "train": train.main, "evaluate": evaluate.main}
TOOLS = {"predict": predict.main, "compare": compare.main, "baseline": baseline.main, "repro-check": repro_check.main,
         "reproduce": reproduce.main, "params-reference": params_reference.main,
         "plots-template": plots_template.main, "report": report.main, "stack": stack.main, "sweep": sweep.main,
         "preset": preset.main}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Reproducible image classification: the DVC stages (run them with `dvc repro`) and the tools.

    Stages: download, normalization-stats, train, evaluate. Tools: predict, compare, baseline,
    repro-check, reproduce, params-reference, plots-template, report, stack, sweep, preset.
    """


for name, command in {**STAGES, **TOOLS}.items():
    main.add_command(command, name)

if __name__ == "__main__":
    main()
