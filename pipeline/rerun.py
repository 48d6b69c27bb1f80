"""Re-running the pipeline from scratch in a clean clone: the engine of repro_check and reproduce."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Outcome:
    """What one pipeline run produced, reduced to what must be reproducible."""

    hashes: dict[str, str]  # output file → sha256
    metrics: dict[str, float]  # flattened metrics/train.json and metrics/eval.json

    def differences(self, other: Outcome) -> list[str]:
        """Readable lines for every hash or metric that differs."""
        lines = [f"{path}: sha256 {self.hashes[path][:16]}… vs {other.hashes.get(path, 'missing')[:16]}…"
                 for path in self.hashes if self.hashes[path] != other.hashes.get(path)]
        for key in sorted(set(self.metrics) | set(other.metrics)):
            a, b = self.metrics.get(key), other.metrics.get(key)
            if a != b:
                lines.append(f"{key}: {a!r} vs {b!r}")
        return lines


def git(*args: str, cwd: Path) -> str:
    """Run git, raising PipelineError with its message on failure."""
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"git {' '.join(args)}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'failed'}")
    return proc.stdout.strip()


def clone(source: Path, commit: str, dest: Path) -> Path:
    """A fresh clone of `source` at `commit` (outputs, caches and stores are not in git, so none come along)."""
    git("clone", "-q", "--no-hardlinks", str(source), str(dest), cwd=source)
    git("-c", "advice.detachedHead=false", "checkout", "-q", commit, cwd=dest)
    return dest


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with the nested keys of `override` replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def write_params(root: Path, override: dict[str, Any]) -> None:
    """Apply an override to the clone's params.yaml."""
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()) or {}, override), sort_keys=False))


def run_pipeline(root: Path, log: Path) -> Outcome:
    """`dvc repro` in `root` with its own MLflow store; the outputs that must be reproducible."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with open(log, "w") as fh:
        proc = subprocess.run(["dvc", "repro"], cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise PipelineError(f"dvc repro failed in {root} (log {log}):\n{tail}")
    return collect(root)


def collect(root: Path) -> Outcome:
    """Hashes of model and statistics, and every numeric metric (the MLflow run id excluded)."""
    hashes = {p: hashlib.sha256((root / p).read_bytes()).hexdigest() for p in ("models/model.pt", "data/stats.json")}
    metrics: dict[str, float] = {}
    for name in ("metrics/train.json", "metrics/eval.json"):
        data = json.loads((root / name).read_text())
        prefix = Path(name).stem
        for key, value in flatten(data).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[f"{prefix}.{key}"] = float(value)
    return Outcome(hashes=hashes, metrics=metrics)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → {"a.b": value}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain aligned text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*map(str, r)) for r in [header, *rows])
