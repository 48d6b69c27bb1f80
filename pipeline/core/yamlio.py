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

from pipeline.core.errors import PipelineError


def read_yaml(text: str, source: str = "YAML") -> Any:
    """YAML text as plain values, read as DVC reads params.yaml (ruamel.yaml's safe loader, YAML
    1.2).

    Aliases are refused before anything is built: nested aliases ("billion laughs") expand
    exponentially, and a parameters file never needs them. Raises PipelineError naming `source`.
    """
    from ruamel.yaml import YAML, YAMLError
    from ruamel.yaml.events import AliasEvent

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
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise PipelineError(f"{source}: not valid YAML{where}: {problem}") from None


def update_yaml(path: Path, override: dict[str, Any]) -> None:
    """Write the nested values of `override` into the YAML file at `path`, keeping its comments and
    order (ruamel.yaml's round trip, as `dvc exp run -S` edits params.yaml)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    doc = yaml.load(path.read_text())

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
