"""The code's house rules: dvc.yaml deps are the import graph; sizes a reader can hold; the core
imports only itself."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest
from helpers import REPO

from pipeline.core.yamlio import read_yaml
from pipeline_tools import dvc_deps

PACKAGES = ("pipeline", "pipeline_tools", "pipeline_team")


def stages() -> dict[str, dict]:
    return read_yaml((REPO / "dvc.yaml").read_text(), "dvc.yaml")["stages"]


def stage_module(stage: dict) -> str:
    return dvc_deps.stage_module(stage["cmd"])


def python_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def test_dvc_yaml_code_deps_are_the_import_graph() -> None:
    # DVC reruns a stage whenever code it runs changes, and only then.
    assert not dvc_deps.drift(REPO), (
        "dvc.yaml's code deps differ from what the stages import; run `python -m pipeline "
        "dvc-deps`:\n" + "\n".join(dvc_deps.drift(REPO))
    )


def test_closure_follows_lazy_and_from_imports() -> None:
    # The checker itself: the train stage reaches the training loop only through imports inside
    # functions.
    closure = set(dvc_deps.import_closure(REPO, "pipeline.stages.train"))
    assert {
        "pipeline/core/loop.py",
        "pipeline/core/atomic.py",
        "pipeline/core/__init__.py",
    } <= closure
    assert "pipeline/core/metrics.py" not in closure  # evaluation code does not retrain the model
    assert "pipeline/core/loop.py" not in dvc_deps.import_closure(REPO, "pipeline.stages.download")


def test_one_command_per_stage_named_like_the_stage() -> None:
    from pipeline.__main__ import STAGES

    assert set(STAGES) == set(stages())
    for name, stage in stages().items():
        module = stage_module(stage)
        assert module == f"pipeline.stages.{name.replace('-', '_')}", (name, module)
        assert STAGES[name][0] == module


def test_every_module_says_what_it_is_for() -> None:
    for path in python_files():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc.splitlines()[0]) > 20, (
            f"{path.relative_to(REPO)}: no module docstring"
        )


def test_core_knows_nothing_of_click_or_exits() -> None:
    for path in sorted((REPO / "pipeline" / "core").rglob("*.py")):
        names = dvc_deps.imported_names(path)
        assert "click" not in names and "sys.exit(" not in path.read_text(), path.name
        # The tracking package talks to MLflow; serving is the model MLflow itself loads, never
        # imported by a workflow.
        if path.parent.name != "tracking" and path.name != "serving.py":
            assert not any(n.split(".")[0] == "mlflow" for n in names), (
                f"{path.name} imports mlflow"
            )


# Sizes in lines of code: not blank, not a comment, not a docstring. Counted so, a cap measures the
# code, not how wide the formatter lets it run (ruff, line length 100, decides the width).
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def docstring_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr):
            value = node.body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                lines.update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    return lines


def code_lines(text: str) -> list[int]:
    """The line numbers that hold code (a token that is not a comment, inside no docstring)."""
    skip = docstring_lines(ast.parse(text))
    quiet = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in quiet and token.type != tokenize.ENDMARKER:
            lines.update(range(token.start[0], token.end[0] + 1))
    return sorted(lines - skip)


def test_code_lines_skip_comments_blanks_and_docstrings() -> None:
    text = 'def f():\n    """Doc\n    string."""\n\n    # why\n    return (\n        1\n    )\n'
    assert code_lines(text) == [1, 6, 7, 8]


def test_sizes_a_reader_can_hold() -> None:
    too_long = []
    for path in python_files():
        text = path.read_text()
        rel = path.relative_to(REPO)
        code = code_lines(text)
        if len(code) > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {len(code)} lines of code")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = sum(node.lineno <= n <= node.end_lineno for n in code)
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {length} lines of code")
    assert not too_long, too_long


def project_imports(path: Path) -> set[str]:
    """The project modules (files, as dotted names) `path` imports."""
    out = set()
    for name in dvc_deps.imported_names(path):
        if name.split(".")[0] in PACKAGES and dvc_deps.module_file(REPO, name) is not None:
            out.add(name)
    return out


def test_the_pipeline_imports_neither_tools_nor_team() -> None:
    # What `dvc repro` runs stands alone: the tools and the team layer are its clients, never its
    # parts.
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        if path.name == "__main__.py":
            continue  # `python -m pipeline` lists every command; no stage imports it
        outside = {
            n for n in project_imports(path) if not n.startswith("pipeline.") and n != "pipeline"
        }
        assert not outside, f"{path.relative_to(REPO)} imports {sorted(outside)}"
    for path in sorted((REPO / "pipeline_tools").rglob("*.py")):
        assert not any(n.startswith("pipeline_team") for n in project_imports(path)), path.name


def test_the_pipeline_holds_no_sweep_machinery() -> None:
    # A sweep reaches training through pipeline.core.hooks; Optuna and its trials live in the team
    # layer (`python -m pipeline`'s list of commands names the sweep command, nothing more).
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        if path.name == "__main__.py":
            continue
        names = dvc_deps.imported_names(path)
        assert not any(n.split(".")[0] == "optuna" for n in names), path.name
        text = path.read_text().lower()
        assert "optuna" not in text and "trial" not in text, path.relative_to(REPO)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for path in python_files():
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph[module] = {
            str(dvc_deps.module_file(REPO, n).relative_to(REPO).with_suffix(""))
            .replace("/", ".")
            .removesuffix(".__init__")
            for n in project_imports(path)
        } - {module}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt) :], node, nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
