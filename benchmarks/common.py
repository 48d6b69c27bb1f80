"""What every part of the benchmark shares: the machine's description, scratch clones, timed
processes."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pipeline.core import cpu, paths
from pipeline.core.repo import clean_env
from pipeline_tools import rerun

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """What the figures depend on besides the code: CPU model, flags and clock, cores, versions, a
    GPU."""
    import torch

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""

    def field(name):
        return next(
            (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith(name)), ""
        )

    return {
        "cpu": field("model name") or platform.processor(),
        "flags": cpu.flags(),
        "cores": os.cpu_count(),
        "mhz": float(field("cpu MHz") or 0),
        "threads": torch.get_num_threads(),
        "native_bf16": cpu.native_bf16(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
    }


def peak_fp32_gflops(m: dict[str, Any]) -> float | None:
    """The CPU's fp32 peak by the usual estimate: cores × clock × FLOPs per cycle (two FMA units: 64
    with AVX-512, 32 with AVX2). The clock is /proc/cpuinfo's, so turbo and throttling are not
    counted."""
    per_cycle = 64 if "avx512f" in m["flags"] else 32 if "avx2" in m["flags"] else None
    return round(m["cores"] * m["mhz"] / 1000 * per_cycle, 1) if per_cycle and m["mhz"] else None


def ratio(slow: float | None, fast: float | None) -> float | None:
    return round(slow / fast, 2) if slow and fast else None


def clone(project: Path, params: dict[str, Any] | None = None, data: bool = True) -> Path:
    """A scratch git clone of `project` with `params` merged in and, with `data`, its data/raw and
    data/stats.json (the stages run without DVC there, so nothing is recorded)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-")) / "p"
    subprocess.run(["git", "clone", "-q", str(project), str(tmp)], check=True)
    if data:
        shutil.copytree(project / paths.RAW, tmp / paths.RAW)
        shutil.copy(project / paths.STATS, tmp / paths.STATS)
    rerun.write_params(tmp, params or {})
    return tmp


def remove(clone_root: Path) -> None:
    shutil.rmtree(clone_root.parent, ignore_errors=True)


# Runs a command and prints the peak RSS (KB) of it and whatever it waited for. A separate, small
# process: Linux counts the RSS a child had when it was forked, and a fork of this ~1 GB benchmark
# would report 1 GB for any stage.
_RSS_OF = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
    "sys.exit(code)"
)


def timed_process(cmd: list[str], cwd: Path, **env: str) -> dict[str, Any]:
    """Run `cmd`; wall seconds, peak RSS (MB, the largest of it and every process it waited for, the
    tracking process included) and its output."""
    with tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile() as rss:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _RSS_OF, rss.name, *cmd],
            cwd=cwd,
            env=clean_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        secs = time.perf_counter() - start
        out.seek(0)
        text = out.read().decode(errors="replace")
        peak_kb = int(Path(rss.name).read_text() or 0)
    if proc.returncode != 0:
        raise click.ClickException(f"{' '.join(cmd)} failed in {cwd}:\n{text[-1500:]}")
    return {"seconds": round(secs, 2), "peak_rss_mb": peak_kb // 1024, "output": text}


def loop_seconds(train_output: str) -> float:
    """The training loop's seconds, from the train stage's last line ("... at epoch 3 (12.3s);
    ...")."""
    found = re.findall(r"best val_accuracy [\d.]+ at epoch \d+ \(([\d.]+)s\)", train_output)
    if not found:
        raise click.ClickException(
            f"no training time in the train stage's output:\n{train_output[-800:]}"
        )
    return float(found[-1])


def timed(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement, saying so on stderr with its result and duration."""
    click.echo(f"{name} ...", err=True)
    start = time.perf_counter()
    out = fn()
    click.echo(f"  {json.dumps(out)[:400]}  ({time.perf_counter() - start:.0f}s)", err=True)
    return out
