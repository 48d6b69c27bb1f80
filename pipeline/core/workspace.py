"""A stage's inputs must be the same at its end as at its start: else DVC's lock would pair the new
inputs with outputs made from the old ones.

DVC hashes a stage's parameters and deps *after* the stage's command exits. Anything that rewrites
them meanwhile in the same workspace (`dvc exp run -S seed=3` rewrites params.yaml before DVC's lock
refuses it; an editor; a `git checkout`) would make dvc.lock record `seed: 3` for a model trained
with seed 42. `InputGuard` records what the stage declares in dvc.yaml (its parameter values, its
deps) at the start; `check` raises PipelineError naming the first input that changed. The stage
decorator (pipeline/cli.py) runs it before every output replaces its previous version
(core.atomic) and once more at the end, so a stage stops with its outputs as they were and exits
non-zero, and DVC records nothing for it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.core.yamlio import read_yaml

DVC_YAML = Path("dvc.yaml")
HASHED_BYTES = 1 << 20  # files up to this size are compared by content, larger ones by size+mtime
UNREADABLE = "<unreadable>"  # a parameters file being rewritten this moment, say
_VARIABLE = re.compile(r"\$\{\s*([\w.-]+)\s*\}")


def _load(path: Path) -> Any:
    """`path`'s YAML as DVC reads it (core.yamlio), or UNREADABLE."""
    try:
        return read_yaml(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError, PipelineError):
        return UNREADABLE


def _lookup(data: Any, key: str) -> Any:
    """The value at dotted `key` of nested mappings (None when absent)."""
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def fingerprint(path: Path) -> Any:
    """What identifies the content of a file or folder: a small file's SHA-256 (rewriting the same
    bytes is no change), a large file's size and mtime (as DVC's own cache of hashes does), a
    folder's files with theirs; None when it does not exist."""
    if path.is_file():
        stat = path.stat()
        if stat.st_size > HASHED_BYTES:
            return ("stat", stat.st_size, stat.st_mtime_ns)
        return ("sha256", hashlib.sha256(path.read_bytes()).hexdigest())
    if path.is_dir():
        entries = []
        for folder, _, names in os.walk(path):
            for name in names:
                file = Path(folder, name)
                try:
                    stat = file.stat()
                except OSError:  # removed while walking: as good as absent
                    continue
                entries.append((file.relative_to(path).as_posix(), stat.st_size, stat.st_mtime_ns))
        return ("folder", tuple(sorted(entries)))
    return None


class InputGuard:
    """The inputs stage `stage` declares in ./dvc.yaml, as they are now: its parameters' values in
    `params_file` (the whole file when dvc.yaml does not name the stage) and its deps' content."""

    def __init__(self, stage: str, params_file: Path) -> None:
        self.stage, self.params_file = stage, Path(params_file)
        declared = _load(DVC_YAML) if DVC_YAML.is_file() else None
        spec = _lookup(declared, f"stages.{stage}") if isinstance(declared, dict) else None
        spec = spec if isinstance(spec, dict) else {}
        self.keys: list[str] = []
        files: list[Path] = []
        for entry in spec.get("params") or []:
            if isinstance(entry, str):
                self.keys.append(entry)
            elif isinstance(entry, dict):  # {other-params-file: [keys]}: that file, whole
                files += [Path(name) for name in entry]
        params = _load(self.params_file)
        for dep in spec.get("deps") or []:
            path = self._interpolate(str(dep), params)
            if path is not None:
                files.append(Path(path))
        self.params = self._params(params)
        self.files = {path: fingerprint(path) for path in files}

    @staticmethod
    def _interpolate(dep: str, params: Any) -> str | None:
        """`dep` with its ${key} replaced from the parameters, None when one has no value."""
        values = [_lookup(params, key) for key in _VARIABLE.findall(dep)]
        if any(value is None or isinstance(value, (dict, list)) for value in values):
            return None
        return _VARIABLE.sub(lambda match: str(_lookup(params, match.group(1))), dep)

    def _params(self, params: Any) -> dict[str, Any]:
        if params == UNREADABLE or not self.keys:
            return {"": fingerprint(self.params_file) if params != UNREADABLE else UNREADABLE}
        return {key: _lookup(params, key) for key in self.keys}

    def check(self) -> None:
        """Raise PipelineError, in one line naming it, if an input changed since the start."""
        now = self._params(_load(self.params_file))
        for key, value in self.params.items():
            if now.get(key) != value:
                what = f" ({key}: {_short(value)} -> {_short(now.get(key))})" if key else ""
                raise PipelineError(self._changed(str(self.params_file), what))
        for path, value in self.files.items():
            if fingerprint(path) != value:
                raise PipelineError(self._changed(path.as_posix(), ""))

    def _changed(self, name: str, what: str) -> str:
        return (
            f"{name} changed while stage {self.stage} ran{what}: its outputs would not match it, "
            "so the stage stops and DVC records nothing for it; run it again once nothing else "
            "changes the workspace (another `dvc exp run` in it?)"
        )


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."
