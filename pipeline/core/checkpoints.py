"""Full training checkpoints after every epoch, so a killed train stage resumes where it stopped.

They live in `checkpoints/`, which is not a DVC output (DVC deletes a stage's outputs before running
it) and is ignored by git. A checkpoint is used only when its fingerprint — the training parameters
and the normalisation statistics — matches the current run; it is deleted once training finishes.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from pipeline.core import atomic, paths
from pipeline.core.errors import first_line
from pipeline.core.loop import EpochResult, TrainState

PATH = paths.CHECKPOINT


@dataclass(frozen=True)
class Checkpoint:
    """A saved TrainState and the MLflow run it belongs to."""

    state: TrainState
    run_id: str


def fingerprint(params: dict[str, Any], stats: Any) -> str:
    """A digest of everything that must be equal for a checkpoint to be resumable."""
    payload = json.dumps({"params": params, "stats": stats}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def save(state: TrainState, fp: str, run_id: str, path: Path = PATH) -> None:
    """Write the training state atomically (a kill mid-write leaves the previous checkpoint).

    Stored as plain tensors, dicts and numbers, so torch.load(weights_only=True) reads it back.
    """
    plain = {f.name: getattr(state, f.name) for f in fields(state)}
    plain["history"] = [asdict(r) for r in state.history]
    buf = io.BytesIO()
    torch.save({**plain, "fingerprint": fp, "run_id": run_id}, buf)
    atomic.write_bytes(path, buf.getvalue())


def load(fp: str, path: Path = PATH) -> tuple[Checkpoint | None, str | None]:
    """(the checkpoint at `path` if it matches `fp`, else None; why an existing file is ignored,
    else None)."""
    if not path.is_file():
        return None, None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict) or "fingerprint" not in raw:
            raise ValueError("no fingerprint")
        if raw["fingerprint"] != fp:
            return None, f"ignoring {path}: it belongs to a run with other parameters or statistics"
        raw["history"] = tuple(EpochResult(**row) for row in raw["history"])
        state = TrainState(**{f.name: raw[f.name] for f in fields(TrainState)})
        return Checkpoint(state=state, run_id=str(raw["run_id"])), None
    except Exception as exc:  # a truncated or foreign file fails anywhere inside torch's unpickler
        return None, f"ignoring {path}: not a checkpoint of this pipeline ({first_line(exc)})"


def remove(path: Path = PATH) -> None:
    """Delete the checkpoint after a finished run."""
    path.unlink(missing_ok=True)
