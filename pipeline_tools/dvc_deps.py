"""`python -m pipeline dvc-deps`: each stage's code deps in dvc.yaml, written from the import graph.

DVC reruns a stage when one of its deps changes. A stage runs `python -m pipeline.stages.X`, which
imports some of the package's modules (at the top of a file or inside a function: lazy imports run
too); those files, and only those, are its code deps. This command computes them and rewrites the
`pipeline/…` entries of every stage's `deps` (data deps are left as written), keeping dvc.yaml's
comments and order (ruamel.yaml's round trip, the library DVC writes dvc.yaml with).
`tests/test_layout.py` calls `drift` and names this command when dvc.yaml is out of date.
"""

from __future__ import annotations

import ast
import io
from pathlib import Path
from typing import Any

import click

from pipeline.cli import reports_errors
from pipeline.core import atomic
from pipeline.core.errors import PipelineError
from pipeline.core.yamlio import load_round_trip

PACKAGE = "pipeline"
DVC_YAML = Path("dvc.yaml")


def module_file(root: Path, name: str) -> Path | None:
    """The file of a dotted module name inside the project at `root`, or None for a module from
    elsewhere."""
    base = root / name.replace(".", "/")
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _typing_only(node: ast.AST) -> bool:
    """An `if TYPE_CHECKING:` block: imports for annotations, never run."""
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _run_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` that can run (typing-only blocks left out)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        todo += [child for child in ast.iter_child_nodes(node) if not _typing_only(child)]
    return out


def imported_names(path: Path) -> set[str]:
    """Every absolute module name `path` imports when it runs, at the top or inside a function
    (imports under `if TYPE_CHECKING:` only serve annotations and are left out)."""
    names: set[str] = set()
    for node in _run_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(
                f"{node.module}.{alias.name}" for alias in node.names
            )  # `from pkg import module`
    return names


def import_closure(root: Path, module: str) -> list[str]:
    """The project files (relative POSIX paths, sorted) that `python -m module` imports,
    transitively, including the packages' __init__ files Python runs on the way."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            path = module_file(root, ".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            todo += [n for n in imported_names(path) if n.split(".")[0] == PACKAGE]
    return sorted(p.relative_to(root).as_posix() for p in seen)


def stage_module(cmd: str) -> str:
    """The module a stage command runs (`python -m MODULE …`)."""
    words = cmd.split()
    if words[:2] != ["python", "-m"] or len(words) < 3:
        raise PipelineError(f"{DVC_YAML}: stage command {cmd!r} is not `python -m MODULE`")
    return words[2]


def _load(root: Path) -> tuple[Any, Any]:
    """(ruamel's round-trip YAML, dvc.yaml's document). Raises PipelineError naming dvc.yaml (and
    where the parser stopped) when it cannot be read or parsed or has no mapping of stages."""
    yaml, doc = load_round_trip(root / DVC_YAML, str(DVC_YAML))
    yaml.indent(mapping=2, sequence=4, offset=2)
    stages = doc.get("stages") if isinstance(doc, dict) else None
    if not isinstance(stages, dict) or not all(
        isinstance(stage, dict)
        and isinstance(stage.get("cmd"), str)
        and isinstance(stage.get("deps", []), list)
        for stage in stages.values()
    ):
        raise PipelineError(
            f"{DVC_YAML}: not a pipeline of stages (`stages:` mapping names to a `cmd` and a list "
            "of `deps`)"
        )
    return yaml, doc


def expected_deps(root: Path, deps: list[str], cmd: str) -> list[str]:
    """`deps` with its code entries replaced by the import closure of the stage's module."""
    data = [d for d in deps if not str(d).startswith(f"{PACKAGE}/")]
    return [*data, *import_closure(root, stage_module(cmd))]


def drift(root: Path) -> list[str]:
    """One line per stage whose code deps differ from its import closure (empty when up to date)."""
    _, doc = _load(root)
    lines = []
    for name, stage in doc["stages"].items():
        have, want = (
            list(stage.get("deps", [])),
            expected_deps(root, list(stage.get("deps", [])), stage["cmd"]),
        )
        if have != want:
            missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
            lines.append(
                f"stage {name}: missing {missing or 'nothing'}, needless {extra or 'nothing'}"
            )
    return lines


def write(root: Path) -> list[str]:
    """Rewrite dvc.yaml's code deps; returns the names of the stages that changed."""
    yaml, doc = _load(root)
    changed = []
    for name, stage in doc["stages"].items():
        want = expected_deps(root, list(stage.get("deps", [])), stage["cmd"])
        if list(stage.get("deps", [])) != want:
            stage["deps"] = want
            changed.append(name)
    if changed:
        out = io.StringIO()
        yaml.dump(doc, out)
        atomic.write_text(root / DVC_YAML, out.getvalue())  # whole or not at all
    return changed


@click.command()
@click.option("--check", is_flag=True, help="Only report drift (exit 1), write nothing.")
@reports_errors
def main(check: bool) -> None:
    """Write every stage's code deps in dvc.yaml from what its module imports."""
    from pipeline.core import paths

    root = paths.project_root()
    if check:
        lines = drift(root)
        for line in lines:
            click.echo(line)
        raise SystemExit(1 if lines else 0)
    changed = write(root)
    click.echo(
        f"{DVC_YAML}: code deps rewritten for {', '.join(changed)}"
        if changed
        else f"{DVC_YAML}: up to date"
    )


if __name__ == "__main__":
    main()
