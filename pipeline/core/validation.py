"""Typed, frozen parameter objects from plain values: the field spec and the one checker.

A parameter is a dataclass field made by `spec`: its default, its constraints and a one-line help
text. `build` checks a plain mapping (as read from YAML) against such a dataclass, each value once,
and raises PipelineError naming the dotted key, what it must be and what it got. `describe` says the
same in words, for messages and the generated parameter reference.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
import typing
from collections.abc import Iterable
from dataclasses import field
from typing import Any

from pipeline.core.errors import PipelineError

SHORT_CHOICES = 8  # a message lists this many of a longer list of choices (train.model's)


def spec(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    pattern: tuple[str, str] | None = None,
) -> Any:
    """A dataclass field with a default, constraints and the help text docs/parameters.md shows.

    `pattern` is (regular expression a string must match in full, how to say it in a message).
    """
    meta = {
        "help": help,
        "choices": choices,
        "gt": gt,
        "ge": ge,
        "lt": lt,
        "le": le,
        "pattern": pattern,
    }
    return field(default=default, metadata=meta)


def build(cls: type, raw: Any, prefix: str, source: str, every: tuple[str, ...] = ()) -> Any:
    """`cls` from the mapping `raw` (its keys under `prefix`), each value checked; PipelineError
    naming the dotted key otherwise, an unknown key with the closest of `every` dotted key of the
    whole schema (the top level's leaves when not given)."""
    every = every or tuple(k for k, _, _ in leaves(cls, prefix))
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise PipelineError(
            f"{source}: {where} must be a mapping of keys to values, got {_show(raw)}"
        )
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = did_you_mean_key(f"{prefix}{key}", every) or did_you_mean(
                str(key), names, prefix
            )
            known = ", ".join(f"{prefix}{n}" for n in names)
            raise PipelineError(
                f"{source}: unknown parameter '{prefix}{key}'"
                + (f"; {close}" if close else f" (known here: {known})")
            )
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = build(hints[f.name], raw[f.name], f"{key}.", source, every)
        else:
            values[f.name] = _check(key, hints[f.name], f.metadata, raw[f.name], source)
    return cls(**values)


def _check(key: str, hint: Any, meta: Any, value: Any, source: str) -> Any:
    if value == AUTO and _takes_auto(hint):
        return AUTO
    if isinstance(value, dict) and _mapping(hint):
        return _check_mapping(key, hint, meta, value, source)
    base, optional = _unwrap(hint)

    def bad() -> PipelineError:
        close = did_you_mean(value, meta["choices"] or ()) if isinstance(value, str) else ""
        if close:  # the suggestion first; the list of choices is in the parameter reference
            return PipelineError(f"{source}: {key}: {close} (got {_show(value)})")
        return PipelineError(
            f"{source}: {key} must be {describe(hint, meta, short=True)}, got {_show(value)}"
        )

    if typing.get_origin(base) is tuple:
        if not isinstance(value, list) or not value:
            raise bad()
        try:
            return tuple(
                _check(key, typing.get_args(base)[0], meta, item, source) for item in value
            )
        except PipelineError:
            raise bad() from None
    if value is None:
        if optional:
            return None
        raise bad()
    if base is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif base is float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise bad()
        value = float(value)
    elif base is str:
        if not isinstance(value, str) or not value.strip():
            raise bad()
        if meta["choices"] and value not in meta["choices"]:
            raise bad()
        if meta["pattern"] and not re.fullmatch(meta["pattern"][0], value):
            raise bad()
        return value  # bounds are a mapping's (str | dict fields), not the name's
    for bound, holds in (
        ("gt", operator.gt),
        ("ge", operator.ge),
        ("lt", operator.lt),
        ("le", operator.le),
    ):
        if meta[bound] is not None and not holds(value, meta[bound]):
            raise bad()
    return value


AUTO = "auto"  # the one word a `X | Literal["auto"]` field takes besides an X


def _takes_auto(hint: Any) -> bool:
    """Whether the field's type is `X | Literal["auto"]`."""
    return typing.Literal[AUTO] in typing.get_args(hint)


def _check_mapping(key: str, hint: Any, meta: Any, value: dict, source: str) -> dict[str, float]:
    """A `str | dict[str, float]` field given a mapping: names (YAML reads `3:` as an integer, so
    integers become their digits) to finite numbers within the field's bounds."""
    if not value:
        raise PipelineError(f"{source}: {key} must be {describe(hint, meta)}, got an empty mapping")
    out: dict[str, float] = {}
    number = {**meta, "choices": None}  # the field's bounds, for each value
    for name, weight in value.items():
        if isinstance(name, bool) or not isinstance(name, (str, int)) or not str(name).strip():
            raise PipelineError(f"{source}: {key} has a key that is not a name: {_show(name)}")
        out[str(name)] = _check(f"{key}.{name}", float, number, weight, source)
    return out


def _mapping(hint: Any) -> bool:
    """Whether `hint` also accepts a mapping (`str | dict[str, float]`)."""
    return any(typing.get_origin(a) is dict for a in typing.get_args(hint))


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type, whether null is allowed) of `X`, `X | None`, `X | Literal["auto"]` or
    `X | dict[...]` (the mapping is checked by `_check_mapping`)."""
    args = typing.get_args(hint)
    if typing.Literal[AUTO] in args:
        return next(a for a in args if a != typing.Literal[AUTO]), False
    if type(None) in args or _mapping(hint):
        rest = [a for a in args if a is not type(None) and typing.get_origin(a) is not dict]
        return rest[0], type(None) in args
    return hint, False


def leaves(cls: type, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, field, type hint) of every parameter of `cls`, nested dataclasses walked, in
    order."""
    out: list[tuple[str, Any, Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += leaves(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f, hints[f.name]))
    return out


def describe(hint: Any, meta: Any, short: bool = False) -> str:
    """What a value of this field must be, in words: "an integer >= 1 or null", "one of a, b";
    `short` (for a message) names only the first SHORT_CHOICES of a longer list of choices."""
    base, optional = _unwrap(hint)
    if typing.get_origin(base) is tuple:
        return "a non-empty list of " + describe(typing.get_args(base)[0], meta).replace(
            "an integer", "integers"
        )
    if _mapping(hint):
        bounded = describe(float, {**meta, "choices": None}).replace("a number", "numbers")
        text = "one of " + ", ".join(meta["choices"]) + f", or a mapping of names to {bounded}"
    elif meta["choices"] and short and len(meta["choices"]) > SHORT_CHOICES:
        shown = ", ".join(meta["choices"][:SHORT_CHOICES])
        text = f"one of {shown}… ({len(meta['choices'])} names, listed in docs/parameters.md)"
    elif meta["choices"]:
        text = "one of " + ", ".join(meta["choices"])
    elif meta["pattern"]:
        text = meta["pattern"][1]
    else:
        text = {
            bool: "true or false",
            int: "an integer",
            float: "a number",
            str: "a non-empty string",
        }[base]
        signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        bounds = [f"{sign} {_number(meta[b])}" for b, sign in signs.items() if meta[b] is not None]
        if bounds:
            text += " " + " and ".join(bounds)
    return text + (" or null" if optional else "") + (f" or {AUTO}" if _takes_auto(hint) else "")


def close_matches(word: str, candidates: Iterable[str], most: int = 3) -> list[str]:
    """The candidates close to `word` (difflib.get_close_matches, its default cutoff 0.6),
    closest first, ignoring case: "CNN" finds "cnn" alone."""
    by_lower: dict[str, str] = {}
    for c in candidates:
        by_lower.setdefault(c.lower(), c)
    if word.lower() in by_lower:  # only the case differs: that one, not its neighbours too
        return [by_lower[word.lower()]]
    return [by_lower[m] for m in difflib.get_close_matches(word.lower(), by_lower, n=most)]


def did_you_mean(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    """ "did you mean x?" (or "x or y") for the candidates close to `word`, else "". Matched
    without a `prefix` all candidates share (a section's "train.", which would make every key of
    the section look close) and shown with it."""
    close = close_matches(word, candidates)
    return f"did you mean {' or '.join(prefix + c for c in close)}?" if close else ""


def did_you_mean_key(key: str, known: Iterable[str]) -> str:
    """did_you_mean for a dotted key among `known` dotted keys: its last part in another section
    ("train.image_size": data.image_size), else a close key in its section ("train.lrr":
    train.lr), else a close last part in any section."""
    section, _, leaf = key.rpartition(".")
    by_leaf: dict[str, list[str]] = {}
    for k in known:
        by_leaf.setdefault(k.rpartition(".")[2].lower(), []).append(k)
    if leaf.lower() in by_leaf:
        return f"did you mean {' or '.join(by_leaf[leaf.lower()][:3])}?"
    same = [
        k.rpartition(".")[2]
        for ks in by_leaf.values()
        for k in ks
        if k.rpartition(".")[0] == section
    ]
    said = did_you_mean(leaf, same, f"{section}." if section else "")
    close = [k for c in close_matches(leaf, by_leaf) for k in by_leaf[c]][:3]
    return said or (f"did you mean {' or '.join(close)}?" if close else "")


def _number(x: float) -> str:
    """A bound as a person writes it: 4294967296, not 4.29497e+09; 0.5 as 0.5."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, dict) else "a mapping"
    return text if len(text) <= 60 else text[:57] + "..."
