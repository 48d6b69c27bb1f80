"""A sweep's search space (`sweeps/space.yaml`): dotted params.yaml keys, each a range or a list of
choices, and a pruner.

Checked against the parameters' own rules (core.params) before anything starts: an unknown key, a
bad range or a value params.yaml would refuse stops the sweep with one line naming the key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError, first_line
from pipeline.core.params import Params, flatten, with_values
from pipeline.core.validation import did_you_mean_key
from pipeline.core.yamlio import read_yaml
from pipeline_team.sweep import trial

DEFAULT_SPACE = Path("sweeps/space.yaml")
# Not sweepable: trials must log into the project's MLflow experiment and read its data.
FIXED_KEYS = ("mlflow.", "data.mirror")


@dataclass(frozen=True)
class Dimension:
    """One parameter of the search space: a range (int or float, as the parameter is) or a list of
    choices."""

    key: str
    kind: str  # "int", "float" or "choices"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:  # -> optuna.distributions.BaseDistribution
        """The Optuna distribution to sample from."""
        from optuna import distributions as d

        if self.kind == "int":
            return d.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        if self.kind == "float":
            return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        # Optuna's choices must be scalars: lists (layer sizes) travel as their JSON text.
        return d.CategoricalDistribution([_choice_token(c) for c in self.choices])

    def value(self, sampled: Any) -> Any:
        """The params.yaml value of what Optuna sampled."""
        if self.kind == "choices":
            return next(c for c in self.choices if _choice_token(c) == sampled)
        return int(sampled) if self.kind == "int" else float(sampled)


@dataclass(frozen=True)
class SearchSpace:
    """What a sweep samples and how it prunes, as read from the space file."""

    dimensions: tuple[Dimension, ...]
    pruner: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, stored with the study so every worker can check it samples the
        same space."""
        return {
            "params": {
                d.key: {k: v for k, v in vars(d).items() if k != "key"} for d in self.dimensions
            },
            "pruner": self.pruner,
        }


def _choice_token(choice: Any) -> Any:
    return json.dumps(choice) if isinstance(choice, list) else choice


def load_space(path: Path, base: Params) -> SearchSpace:
    """Read and check a search-space file against the parameters' rules (core.params) on top of
    `base`: unknown keys, bad ranges and values params.yaml would refuse stop here with one line
    naming the key."""
    where = str(path)
    try:
        raw = read_yaml(Path(path).read_text(), str(path))
    except FileNotFoundError:
        raise PipelineError(f"{where}: search-space file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{where}: cannot read ({first_line(exc)})") from None
    if not isinstance(raw, dict) or set(raw) - {"params", "pruner"}:
        raise PipelineError(
            f"{where}: must be a mapping with the keys params and (optionally) pruner"
        )
    entries = raw.get("params")
    if not isinstance(entries, dict) or not entries:
        raise PipelineError(
            f"{where}: params must map dotted params.yaml keys to a range or choices"
        )
    defaults = flatten(base)
    dims = tuple(_dimension(where, key, spec, defaults, base) for key, spec in entries.items())
    return SearchSpace(dims, _pruner_spec(where, raw.get("pruner") or {"type": "none"}))


def _dimension(
    where: str, key: Any, spec: Any, defaults: Mapping[str, Any], base: Params
) -> Dimension:
    if not isinstance(key, str) or key not in defaults:
        close = did_you_mean_key(key, defaults) if isinstance(key, str) else ""
        raise PipelineError(
            f"{where}: unknown parameter {key!r}"
            + (f"; {close}" if close else " (see docs/parameters.md)")
        )
    if key.startswith(FIXED_KEYS):
        raise PipelineError(
            f"{where}: {key} cannot be swept (every trial logs to the project's store and reads "
            "its data)"
        )
    if not isinstance(spec, dict):
        raise PipelineError(
            f"{where}: {key} must be {{low: …, high: …}} or {{choices: […]}}, got {spec!r}"
        )
    if "choices" in spec:
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise PipelineError(f"{where}: {key}: choices must be a non-empty list and stand alone")
        for choice in spec["choices"]:
            _check_value(where, key, choice, base)
        if len({json.dumps(c, sort_keys=True) for c in spec["choices"]}) != len(spec["choices"]):
            raise PipelineError(f"{where}: {key}: choices repeat a value")
        return Dimension(key, "choices", choices=tuple(spec["choices"]))
    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= set(spec):
        raise PipelineError(
            f"{where}: {key} must have low and high (and optionally log or step), or choices"
        )
    kind = _number_kind(key)
    if kind is None:
        raise PipelineError(f"{where}: {key} is not a number; give it choices instead of a range")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    numbers = (int,) if kind == "int" else (int, float)
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers) or not math.isfinite(value)
        ):
            raise PipelineError(
                f"{where}: {key}: {name} must be {'an integer' if kind == 'int' else 'a number'}, "
                f"got {value!r}"
            )
    if not isinstance(log, bool):
        raise PipelineError(f"{where}: {key}: log must be true or false, got {log!r}")
    if not low < high:
        raise PipelineError(
            f"{where}: {key}: low must be < high, got low {low!r} and high {high!r}"
        )
    if log and low <= 0:
        raise PipelineError(f"{where}: {key}: a log range needs low > 0, got {low!r}")
    if step is not None and (step <= 0 or log):
        raise PipelineError(f"{where}: {key}: step must be > 0 and cannot be combined with log")
    # Every bound in core.params is an interval, so both ends valid means every value between is.
    for value in (low, high):
        _check_value(where, key, value, base)
    return Dimension(key, kind, float(low), float(high), log, None if step is None else float(step))


def _number_kind(key: str) -> str | None:
    """ "int" or "float" for a numeric parameter (null allowed or not), None for any other type."""
    import typing

    cls: Any = Params
    *parents, name = key.split(".")
    for part in parents:
        cls = typing.get_type_hints(cls)[part]
    hint = typing.get_type_hints(cls)[name]
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    return {int: "int", float: "float"}.get(base)


def _check_value(where: str, key: str, value: Any, base: Params) -> None:
    # core.params names the key and what it allows: "space.yaml: train.lr must be a number > 0, got
    # -1".
    with_values(base, {key: value}, source=where)


def _pruner_spec(where: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or spec.get("type", "none") not in trial.PRUNERS:
        raise PipelineError(f"{where}: pruner.type must be one of {', '.join(trial.PRUNERS)}")
    spec = {"type": spec.get("type", "none"), **{k: v for k, v in spec.items() if k != "type"}}
    allowed = trial.PRUNERS[spec["type"]]
    for key in spec:
        if key != "type" and key not in allowed:
            raise PipelineError(
                f"{where}: pruner.{key} is not an argument of the {spec['type']} pruner "
                f"({', '.join(allowed) or 'it takes none'})"
            )
    try:
        trial.pruner(spec)  # Optuna's own checks (ranges, a threshold needs lower or upper)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{where}: pruner: {first_line(exc)}") from None
    return spec
