"""YAML files read and written as DVC does: ruamel.yaml, YAML 1.2
(`dvc.utils.serialize.parse_yaml`).

params.yaml, dvc.lock, presets and search spaces are all read here, so a value means what DVC
records: `dvc exp run -S seed=4:2` writes the string '4:2' (PyYAML's YAML 1.1 would read sexagesimal
242), and `off`, `yes`, `no`, `on` are strings, not booleans.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError, first_line


def read_yaml(text: str, source: str = "YAML") -> Any:
    """YAML text as plain values, read as DVC reads params.yaml (ruamel.yaml's safe loader, YAML
    1.2).

    Aliases are refused before anything is built: nested aliases ("billion laughs") expand
    exponentially, and a parameters file never needs them. Raises PipelineError naming `source`.
    """
    from ruamel.yaml import YAML, YAMLError
    from ruamel.yaml.events import AliasEvent

    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a file's bytes as core.repo.git passes on undecodable ones
        raise PipelineError(f"{source}: not UTF-8 text (character {exc.start})") from None
    yaml = YAML(typ="safe")
    try:
        # Without a '*' there is no alias: the event pass, as long as the load itself, is skipped
        # (dvc.lock).
        for event in yaml.parse(text) if "*" in text else ():
            if isinstance(event, AliasEvent):
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise PipelineError(
                    f"{source}: YAML alias *{event.anchor} at line {line}; aliases are not allowed "
                    "here"
                )
        return yaml.load(text)
    except YAMLError as exc:
        raise syntax_error(exc, source) from None


def syntax_error(exc: Exception, source: str) -> PipelineError:
    """One line for a ruamel.yaml error: `source`, where the parser stopped (line and column, from
    1) and what it found."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    # A reader error (a character YAML forbids) has no mark but its position in its message.
    problem = getattr(exc, "problem", None) or first_line(exc) or "syntax error"
    return PipelineError(f"{source}: not valid YAML{where}: {problem}")


def file_text(path: Path, source: str | None = None) -> str:
    """The UTF-8 text of a YAML file. Raises PipelineError naming it (as `source`, default its
    path) when it is missing, unreadable or not UTF-8."""
    source = source or str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"{source}: file not found") from None
    except OSError as exc:
        raise PipelineError(f"{source}: cannot read ({exc.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{source}: not UTF-8 text (byte {exc.start})") from None


def read_mapping(path: Path, source: str | None = None) -> dict[str, Any]:
    """The YAML file at `path` as read_yaml reads it, which must hold a mapping (an empty file reads
    as {}). Raises PipelineError naming it (as `source`, default its path) for anything else."""
    source = source or str(path)
    data = read_yaml(file_text(path, source), source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PipelineError(f"{source}: the top level must be a mapping")
    return data


def load_round_trip(path: Path, source: str | None = None) -> tuple[Any, Any]:
    """(ruamel.yaml's round-trip YAML, the document at `path`): comments, order and quoting survive
    a dump, as when DVC edits dvc.yaml or params.yaml. Raises PipelineError naming the file (as
    `source`, default its path) when it cannot be read or parsed; nothing is written."""
    from ruamel.yaml import YAML, YAMLError

    source = source or str(path)
    yaml = YAML()
    text = file_text(path, source)
    try:
        return yaml, yaml.load(text)
    except YAMLError as exc:
        raise syntax_error(exc, source) from None


def update_yaml(path: Path, override: dict[str, Any]) -> None:
    """Write the nested values of `override` into the YAML file at `path`, keeping its comments and
    order (ruamel.yaml's round trip, as `dvc exp run -S` edits params.yaml). Raises PipelineError
    naming the file when it cannot be parsed or is not a mapping; then it is left as it was."""
    yaml, doc = load_round_trip(path)
    if not isinstance(doc, dict):
        raise PipelineError(f"{path}: the top level must be a mapping")

    def apply(node: Any, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                apply(node[key], value)
            else:
                node[key] = value

    apply(doc, override)
    with open(path, "w") as fh:
        yaml.dump(doc, fh)


def write_yaml(flat: dict[str, Any]) -> str:
    """{dotted.key: value} as the text of a nested YAML file, in the given order, lists of scalars
    on one line."""
    from ruamel.yaml import YAML

    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, name = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = value
    yaml = YAML(typ="safe")
    yaml.default_flow_style = None  # lists of numbers on one line, as params.yaml writes them
    yaml.sort_base_mapping_type_on_output = False  # the given order
    out = io.StringIO()
    yaml.dump(nested, out)
    return out.getvalue()
