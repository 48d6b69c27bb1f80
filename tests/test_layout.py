"""The code's house rules: dvc.yaml deps cover every module a stage imports, one command per stage, docstrings."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from helpers import REPO

PACKAGE = "pipeline"


def module_file(name: str) -> Path | None:
    """The file of a dotted module name inside this project, or None for a module from elsewhere."""
    base = REPO / name.replace(".", "/")
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imported_names(path: Path) -> set[str]:
    """Every module name `path` imports, at the top or inside a function (lazy imports run too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def import_closure(module: str) -> set[str]:
    """The project files (relative paths) that running `python -m module` imports, transitively,
    including the packages' __init__ files Python runs on the way."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            path = module_file(".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            todo += [n for n in imported_names(path) if n.split(".")[0] == PACKAGE]
    return {p.relative_to(REPO).as_posix() for p in seen}


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> str:
    cmd = stage["cmd"].split()
    assert cmd[:2] == ["python", "-m"], stage["cmd"]
    return cmd[2]


@pytest.mark.parametrize("name", list(stages()))
def test_stage_deps_cover_every_module_the_stage_imports(name: str) -> None:
    stage = stages()[name]
    needed = import_closure(stage_module(stage))
    listed = {d for d in stage.get("deps", []) if d.startswith(f"{PACKAGE}/")}
    missing, extra = sorted(needed - listed), sorted(listed - needed)
    assert not missing, (
        f"dvc.yaml stage {name!r} does not list {', '.join(missing)}, which it imports: DVC would not rerun it "
        f"when they change. Its pipeline/ deps should be: {sorted(needed)}"
    )
    assert not extra, f"dvc.yaml stage {name!r} lists {', '.join(extra)}, which it does not import (needless reruns)"


def test_closure_follows_lazy_and_from_imports() -> None:
    # The checker itself: the train stage reaches the training loop only through imports inside functions.
    closure = import_closure("pipeline.stages.train")
    assert {"pipeline/core/loop.py", "pipeline/core/atomic.py", "pipeline/core/__init__.py"} <= closure
    assert "pipeline/core/metrics.py" not in closure  # evaluation code does not retrain the model
    assert "pipeline/core/loop.py" not in import_closure("pipeline.stages.download")


def test_one_command_per_stage_named_like_the_stage() -> None:
    from pipeline.__main__ import STAGES

    assert set(STAGES) == set(stages())
    for name, stage in stages().items():
        module = stage_module(stage)
        assert module == f"{PACKAGE}.stages.{name.replace('-', '_')}", (name, module)
        assert STAGES[name].callback.__module__ == module


def test_every_module_says_what_it_is_for() -> None:
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc.splitlines()[0]) > 20, f"{path.relative_to(REPO)}: no module docstring"


def test_core_knows_nothing_of_click_or_exits() -> None:
    for path in sorted((REPO / PACKAGE / "core").rglob("*.py")):
        names = imported_names(path)
        assert "click" not in names and "sys.exit(" not in path.read_text(), path.name
        # tracking talks to MLflow; serving is the model MLflow itself loads, never imported by a workflow.
        if path.name not in ("tracking.py", "serving.py"):
            assert not any(n.split(".")[0] == "mlflow" for n in names), f"{path.name} imports mlflow"
