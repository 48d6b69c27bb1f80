"""Every pointer the project writes resolves: a file path, a module, a Markdown heading.

Scanned: the string literals (messages included) and comments of the Python code in pipeline*/,
benchmarks/ and tests/, the comments of the YAML files and the Makefile, and the whole of README.md
and docs/*.md. A reference is
- a path below a folder the repository holds (`docs/speed.md`, `tests/test_x.py::test_y`, globs
  such as `tests/test_catalogue_*.py`), or one of its top-level files (`README.md`, `params.yaml`);
- a dotted module of this project (`core.models`, `pipeline.core.params.Params`): the module must
  exist and define the name that follows it;
- a heading: `README.md#layout`, `docs/tracking.md#the-store`, a Markdown link `[x](team.md#in-
  production)` (relative to the page), or prose such as "see README, Section" / "docs/x.md, section
  Y".
Sections move (README's went to docs/) and modules get renamed: a pointer left behind fails here
with the file and line that hold it.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from helpers import REPO

FOLDERS = (
    ".ci",
    ".github",
    "benchmarks",
    "docs",
    "examples",
    "pipeline",
    "pipeline_team",
    "pipeline_tools",
    "presets",
    "repro",
    "sweeps",
    "tests",
)
TOP_FILES = (
    r"README\.md|params\.yaml|dvc\.yaml|dvc\.lock|Makefile|pyproject\.toml|requirements[\w-]*\.txt"
)
PATH = re.compile(
    rf"(?<![\w./-])(?P<path>(?:{'|'.join(map(re.escape, FOLDERS))})/[\w.*/-]*[\w*]|{TOP_FILES})"
    r"(?:::(?P<test>\w+)|#(?P<anchor>[\w-]+))?"
)
# A single capital (`pipeline.stages.X`) is a placeholder.
MODULE = re.compile(
    r"(?<![\w.])(?P<dotted>(?:pipeline_tools|pipeline_team|pipeline|core)(?:\.(?![A-Z]\b)\w+)+)"
)
# Dotted names that are keys, not modules: Optuna study attributes (core.trial, sweep.study).
NOT_MODULES = frozenset({"pipeline.pruner", "pipeline.space"})
SECTION = re.compile(
    r"(?P<page>README(?:\.md)?|docs/[\w-]+\.md)\s*,\s*(?:[Ss]ection\s+)?(?P<heading>[A-Z`][^)\n;:.,\"']*)"
)
# README.md is an index of docs/: a pointer to it must name its heading, else it is a pointer to
# whichever page the section moved to.
BARE_README = re.compile(r"(?<![\w/.-])README(?:\.md)?(?!\.md|#|\s*,\s*(?:[Ss]ection\s+)?[A-Z`])\b")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
# It plants bad references on purpose (its tests below build them in a temporary tree).
THIS_FILE = Path(__file__).name


def scanned(root: Path) -> list[Path]:
    """The files whose references are checked, relative to `root`."""
    patterns = (
        "pipeline/**/*.py",
        "pipeline_tools/**/*.py",
        "pipeline_team/**/*.py",
        "benchmarks/*.py",
        "tests/*.py",
        "README.md",
        "docs/*.md",
        "examples/**/*.md",
        "*.yaml",
        "presets/*.yaml",
        "sweeps/*.yaml",
        "repro/*.yaml",
        "Makefile",
    )
    found = {p.relative_to(root) for pattern in patterns for p in root.glob(pattern)}
    return sorted(p for p in found if p.name != THIS_FILE and ".venv" not in p.parts)


def fragments(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every string literal and comment of a Python file, every comment of a YAML
    file or Makefile, every line of a Markdown page."""
    text = path.read_text()
    if path.suffix == ".py":
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in (tokenize.STRING, tokenize.COMMENT):
                yield token.start[0], token.string
    elif path.suffix == ".md":
        yield from enumerate(text.splitlines(), 1)
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if "#" in line:
                yield number, line[line.index("#") :]


@cache
def own_text(path: Path) -> str:
    return path.read_text()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def headings(page: Path) -> frozenset[str]:
    """The anchors of a Markdown page's headings (outside fenced code blocks)."""
    found, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#+\s+(.*)", line)):
            found.add(slug(match.group(1)))
    return frozenset(found)


@cache
def top_level_names(module: Path) -> frozenset[str]:
    """Names a module defines or imports at its top level."""
    names: set[str] = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        else:
            targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
            names.update(
                n.id
                for t in targets
                if t is not None
                for n in ast.walk(t)
                if isinstance(n, ast.Name)
            )
    return frozenset(names)


def module_problem(root: Path, dotted: str) -> str | None:
    """Why `dotted` (a module, maybe followed by a name it defines) does not resolve, or None."""
    parts = dotted.split(".")
    parts = ["pipeline", *parts] if parts[0] == "core" else parts
    folder, module = root, None
    for i, part in enumerate(parts):
        if (folder / part).is_dir() and (folder / part / "__init__.py").is_file():
            folder, module = folder / part, folder / part / "__init__.py"
        elif (folder / f"{part}.py").is_file():
            module, rest = folder / f"{part}.py", parts[i + 1 :]
            break
        else:
            module, rest = module, parts[i:]
            break
    else:
        return None
    if module is None:
        return "no such module"
    if rest and rest[0] not in top_level_names(module):
        if module.name == "__init__.py":
            return f"no such module, nor a name {module.parent.relative_to(root)} defines"
        return f"{module.relative_to(root)} defines no {rest[0]}"
    return None


def page_problem(root: Path, page: Path, anchor: str | None) -> str | None:
    """Why `page` (relative to `root`) or its heading `anchor` is missing, or None."""
    if not (root / page).is_file():
        return "no such file"
    if anchor and anchor not in headings(root / page):
        return f"{page} has no heading #{anchor}"
    return None


def problems_in(root: Path, source: Path, text: str) -> Iterator[str]:
    """What is wrong with each reference in one fragment of `source` (relative to `root`). A path
    the same file joins to a temporary root (`root / "sweeps/x.yaml"`) is one it creates itself."""
    for match in PATH.finditer(text):
        path, test, anchor = match["path"], match["test"], match["anchor"]
        if f'/ "{path}"' in own_text(root / source):
            continue
        if "*" in path:
            if not any(root.glob(path)):
                yield f"{path}: matches no file"
        elif not (root / path).exists():
            yield f"{path}: no such file"
        elif test and not re.search(rf"^def {test}\b", (root / path).read_text(), re.M):
            yield f"{path}::{test}: no such test"
        elif anchor and (why := page_problem(root, Path(path), anchor)):
            yield f"{path}#{anchor}: {why}"
    for match in MODULE.finditer(text):
        if match["dotted"] in NOT_MODULES:
            continue
        if why := module_problem(root, match["dotted"]):
            yield f"{match['dotted']}: {why}"
    for match in SECTION.finditer(text):
        page = Path("README.md" if match["page"].startswith("README") else match["page"])
        if why := page_problem(root, page, slug(match["heading"])):
            yield f"{match[0]!r}: {why}"
    for match in BARE_README.finditer(text):
        yield f"{match[0]}: names no heading (README.md#x, or the docs/ page holding the section)"
    if source.suffix == ".md":
        for match in LINK.finditer(text):
            target, _, anchor = match["target"].partition("#")
            if re.match(r"\w+:", target):
                continue  # a URL
            page = (source.parent / target) if target else source
            resolved = Path(*(root / page).resolve().relative_to(root.resolve()).parts)
            if (why := page_problem(root, resolved, anchor or None)) and (
                target.endswith(".md") or not target or not (root / resolved).exists()
            ):
                yield f"link {match['target']}: {why}"


def problems(root: Path) -> list[str]:
    """Every unresolved reference below `root`, as `file:line: reference: why`."""
    return [
        f"{source}:{line}: {why}"
        for source in scanned(root)
        for line, text in fragments(root / source)
        for why in problems_in(root, source, text)
    ]


def test_every_reference_resolves() -> None:
    assert not problems(REPO), "\n".join(problems(REPO))


def planted_tree(root: Path, code: str, page: str = "") -> Path:
    """A small tree like the repository's, with `code` in one module and `page` in docs/a.md."""
    (root / "pipeline" / "core").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "examples" / "images").mkdir(parents=True)
    (root / "examples" / "images" / "README.md").write_text("Pictures go here.\n")
    (root / "pipeline" / "__init__.py").write_text("")
    (root / "pipeline" / "core" / "__init__.py").write_text("")
    (root / "pipeline" / "core" / "models.py").write_text("def build():\n    pass\n")
    (root / "README.md").write_text("# Title\n\n## Layout\n\n```\n# not a heading\n```\n")
    (root / "docs" / "a.md").write_text("# Page A\n\n## The store\n\n" + page)
    (root / "pipeline" / "core" / "user.py").write_text(code)
    for cached in (headings, top_level_names, own_text):
        cached.cache_clear()
    return root


GOOD = [
    '"see docs/a.md#the-store"',
    '"see README.md#layout"',
    "# see README, Layout",
    "# (docs/a.md, section The store)",
    '"pipeline/core/models.py"',
    '"core.models.build"',
    '"pipeline.core.models"',
    '"docs/*.md"',
    '"examples/images/README.md"',
]


@pytest.mark.parametrize("reference", GOOD)
def test_a_good_reference_passes(reference: str, tmp_path: Path) -> None:
    assert (
        problems(
            planted_tree(
                tmp_path, f"x = 1  {reference}\n" if reference[0] == "#" else f"x = {reference}\n"
            )
        )
        == []
    )


@pytest.mark.parametrize(
    ("code", "page", "found"),
    [
        ('raise ValueError("see docs/b.md")\n', "", "docs/b.md: no such file"),
        ('x = "see README.md#parameters"\n', "", "README.md has no heading #parameters"),
        ("x = 1  # see README, Parameters\n", "", "README.md has no heading #parameters"),
        ('x = "(README, section Sweeps)"\n', "", "README.md has no heading #sweeps"),
        ("x = 1  # docs/a.md#the-shop\n", "", "docs/a.md has no heading #the-shop"),
        ('x = "pipeline/core/registry.py"\n', "", "pipeline/core/registry.py: no such file"),
        ('x = "core.registry"\n', "", "core.registry: no such module"),
        ('x = "core.models.ImageClassifier"\n', "", "defines no ImageClassifier"),
        ('x = "tests/test_*.py"\n', "", "tests/test_*.py: matches no file"),
        ("x = 1\n", "See [the store](../README.md#the-store).\n", "README.md has no heading"),
        ("x = 1\n", "See [B](b.md).\n", "link b.md: no such file"),
        ("x = 1\n", "See [below](#nowhere).\n", "docs/a.md has no heading #nowhere"),
        ("x = 1\n", "See README, Multi-process training.\n", "no heading #multi-process-training"),
        ("x = 1  # (see README)\n", "", "README: names no heading"),
        ('x = "the parameter table in README.md"\n', "", "README.md: names no heading"),
    ],
)
def test_a_planted_bad_reference_is_found(code: str, page: str, found: str, tmp_path: Path) -> None:
    reported = problems(planted_tree(tmp_path, code, page))
    assert len(reported) == 1 and found in reported[0], reported
