"""The layer order of the packages, checked on every module's imports (read with ``ast``, nothing imported).

cli -> workflows -> report -> {training, inference, evaluation} -> {data, synthetic} ->
{transforms, models} -> pipeline.core. A module imports only from its own room or from rooms in
lower layers; rooms of one layer never import each other. Imports inside a function are allowed
in the CLI (``--help`` stays fast) and elsewhere only with a comment on the import saying why
(the cost it keeps off a path: torch, matplotlib).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

LAYERS = (
    ("pipeline", "pipeline.core"),
    ("transforms", "models"),
    ("pipeline.data", "pipeline.synthetic"),
    ("pipeline.training", "pipeline.inference", "pipeline.evaluation"),
    ("pipeline.report",),
    ("pipeline.workflows",),
    ("pipeline.cli",),
)
RANK = {room: rank for rank, rooms in enumerate(LAYERS) for room in rooms}
PACKAGES = ("pipeline", "transforms", "models")


def room_of(module: str) -> str:
    """The room a dotted module name belongs to: the longest room name that prefixes it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANK:
            return ".".join(parts[:n])
    raise AssertionError(f"{module}: in no room of the layer order")


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def project_imports(tree: ast.Module) -> list[tuple[ast.stmt, str, bool]]:
    """(statement, imported project module, inside a function?) for every import in ``tree``."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((child, a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:  # `from pipeline.core import config` imports a module
                    found.append((child, f"{child.module}.{alias.name}", in_function))
            visit(child, inside)

    visit(tree, False)
    return [(s, m, f) for s, m, f in found if m.split(".")[0] in PACKAGES]


def resolve(name: str) -> str:
    """``pipeline.core.config.Config`` -> ``pipeline.core.config``: drop the trailing attribute."""
    parts = name.split(".")
    while len(parts) > 1:
        base = REPO.joinpath(*parts)
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            break
        parts.pop()
    return ".".join(parts)


def violations(path: Path, source: str) -> list[str]:
    """What in ``source`` (the text of the module at ``path``) breaks the layer rules."""
    me = module_name(path)
    mine = room_of(me)
    lines = source.splitlines()
    out = []
    for stmt, name, in_function in project_imports(ast.parse(source)):
        target = resolve(name)
        theirs = room_of(target)
        where = f"{path.relative_to(REPO)}:{stmt.lineno}"
        if theirs != mine and (RANK[theirs] > RANK[mine] or RANK[theirs] == RANK[mine]):
            kind = "upward" if RANK[theirs] > RANK[mine] else "sideways"
            out.append(f"{where}: {kind} import of {target} ({mine} may not import {theirs})")
        if in_function and mine != "pipeline.cli" and "#" not in lines[stmt.lineno - 1]:
            out.append(f"{where}: {target} imported inside a function without a comment saying why")
    return out


SOURCES = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_follow_the_layer_order(path):
    assert violations(path, path.read_text()) == []


def test_every_stage_has_its_room():
    rooms = {p.name for p in (REPO / "pipeline").iterdir() if (p / "__init__.py").is_file()}
    assert rooms == {r.split(".")[1] for r in RANK if r.count(".") == 1}
    loose = sorted(p.name for p in (REPO / "pipeline").glob("*.py"))
    assert loose == ["__init__.py"], loose


@pytest.mark.parametrize(
    ("module", "line", "problem"),
    [
        ("pipeline/core/config.py", "from pipeline.data.fingerprint import read_fingerprint", "upward"),
        ("models/blocks.py", "from pipeline.training import handlers", "upward"),
        ("pipeline/training/train.py", "from pipeline.inference.loading import load_network", "sideways"),
        ("transforms/io.py", "from models import build_model", "sideways"),
        (
            "pipeline/data/check.py",
            "def f():\n    from transforms.io import load_volume\n",
            "without a comment",
        ),
    ],
)
def test_the_check_catches_a_bad_import(module, line, problem):
    """The rules fail on what they must refuse (each line added to a real module)."""
    path = REPO / module
    found = violations(path, path.read_text() + "\n" + line + "\n")
    assert any(problem in v for v in found), found


def test_a_commented_local_import_and_the_cli_pass():
    check = REPO / "pipeline/data/check.py"
    lazy = "def f():\n    from transforms.io import load_volume  # torch: not on --help's path\n"
    assert violations(check, check.read_text() + "\n" + lazy) == []
    cli = REPO / "pipeline/cli/commands.py"
    assert violations(cli, cli.read_text() + "\ndef f():\n    from pipeline.workflows import cv\n") == []
