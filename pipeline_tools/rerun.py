"""Re-running the pipeline from scratch in a clean clone: the engine of the repro-check and
reproduce tools."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import paths
from pipeline.core.errors import PipelineError
from pipeline.core.params import flatten
from pipeline.core.repo import clean_env, executable, git
from pipeline.core.yamlio import update_yaml


@dataclass(frozen=True)
class Outcome:
    """What one pipeline run produced, reduced to what must be reproducible."""

    hashes: dict[str, str]  # output file → sha256
    metrics: dict[str, float]  # flattened metrics/train.json and metrics/eval.json

    def differences(self, other: Outcome) -> list[str]:
        """Readable lines for every hash or metric that differs."""
        lines = [
            f"{path}: sha256 {self.hashes[path][:16]}… vs {other.hashes.get(path, 'missing')[:16]}…"
            for path in self.hashes
            if self.hashes[path] != other.hashes.get(path)
        ]
        for key in sorted(set(self.metrics) | set(other.metrics)):
            a, b = self.metrics.get(key), other.metrics.get(key)
            if a != b:
                lines.append(f"{key}: {a!r} vs {b!r}")
        return lines


def clone(source: Path, commit: str, dest: Path) -> Path:
    """A fresh clone of `source` at `commit` (outputs, caches and stores are not in git, so none
    come along)."""
    git("clone", "-q", "--no-hardlinks", str(source), str(dest), cwd=source)
    git("-c", "advice.detachedHead=false", "checkout", "-q", commit, cwd=dest)
    return dest


def write_params(root: Path, override: dict[str, Any]) -> None:
    """Apply an override to the clone's params.yaml."""
    update_yaml(root / paths.PARAMS, override)


# The lines of a `dvc repro` log that tell a person waiting where the run is.
PROGRESS = ("Running stage", "epoch ", "best val_accuracy", "test accuracy")


def run_pipeline(
    root: Path, log: Path, progress: Callable[[str], None] = lambda line: None
) -> Outcome:
    """`dvc repro` in `root` with its own MLflow store; the outputs that must be reproducible.

    Everything DVC prints goes to `log`; the stage and epoch lines also go to `progress` as they
    come, with the seconds since the start.
    """
    start = time.monotonic()
    with open(log, "w") as fh:
        # Unbuffered: the stages print each epoch as it ends, not all at exit.
        proc = subprocess.Popen(
            [executable("dvc"), "repro"],
            cwd=root,
            env=clean_env(PYTHONUNBUFFERED="1"),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=1,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                fh.write(line)
                if line.startswith(PROGRESS):
                    progress(f"  {time.monotonic() - start:5.0f}s  {line.rstrip()}")
        except BaseException:  # Ctrl-C: the run must not outlive the tool that deletes its clone
            proc.kill()
            raise
        finally:
            proc.wait()
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise PipelineError(f"dvc repro failed in {root} (log {log}):\n{tail}")
    return collect(root)


def collect(root: Path) -> Outcome:
    """Hashes of model, statistics and starting weights (train.weights, as the weights stage
    fetched them; absent at commits older than that stage), and every numeric metric (the MLflow
    run id excluded)."""
    hashes = {
        p.as_posix(): hashlib.sha256((root / p).read_bytes()).hexdigest()
        for p in (paths.MODEL, paths.STATS, paths.START)
        if p != paths.START or (root / p).is_file()
    }
    return Outcome(hashes=hashes, metrics=collect_metrics(root))


def collect_metrics(root: Path) -> dict[str, float]:
    """Every numeric metric of metrics/train.json and metrics/eval.json, flattened (`eval.accuracy`,
    `eval.per_class_f1.3`); the MLflow run id and other strings excluded."""
    metrics: dict[str, float] = {}
    for name in (paths.TRAIN_METRICS, paths.EVAL_METRICS):
        data = json.loads((root / name).read_text())
        prefix = name.stem
        for key, value in flatten(data).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[f"{prefix}.{key}"] = float(value)
    return metrics


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain aligned text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*map(str, r)) for r in [header, *rows])
