"""Full training checkpoints after every epoch, so a killed train stage resumes where it stopped.

They live in `checkpoints/`, which is not a DVC output (DVC deletes a stage's outputs before running
it) and is ignored by git. A checkpoint is used only when its fingerprint — the training parameters
and the normalisation statistics — matches the current run; it is deleted once training finishes.
"""
from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path
from typing import Any

import torch

from pipeline import atomic

PATH = Path("checkpoints/train.pt")


def fingerprint(params: dict[str, Any], stats: Any) -> str:
    """A digest of everything that must be equal for a checkpoint to be resumable."""
    payload = json.dumps({"params": params, "stats": stats}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def save(state: dict[str, Any], fp: str, run_id: str, path: Path = PATH) -> None:
    """Write the training state atomically (a kill mid-write leaves the previous checkpoint)."""
    buf = io.BytesIO()
    torch.save({**state, "fingerprint": fp, "run_id": run_id}, buf)
    atomic.write_bytes(path, buf.getvalue())


def load(fp: str, path: Path = PATH) -> dict[str, Any] | None:
    """The checkpoint at `path` if it exists and matches `fp`, else None."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError):
        return None
    return state if state.get("fingerprint") == fp else None


def remove(path: Path = PATH) -> None:
    """Delete the checkpoint after a finished run."""
    path.unlink(missing_ok=True)
