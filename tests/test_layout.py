"""The architecture's rule, checked on the source: dependencies point one way.

`ui → labeler → engine`, `training → engine`; labeler and training meet only through
database rows and files. A new import that breaks this fails here, naming the file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "engine": {"engine"},
    "labeler": {"labeler", "engine"},
    "training": {"training", "engine"},
    "ui": {"ui", "labeler", "engine"},
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_dependencies_point_one_way(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    wrong = {str(f.relative_to(ROOT)): sorted(_imported_packages(f) - ALLOWED[package]) for f in files}
    assert not {f: names for f, names in wrong.items() if names}


def test_every_package_mounts_its_commands() -> None:
    import typer

    from labeler.cli import app

    names = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert {"predict", "serve", "run", "submit", "train", "demo-model", "ui", "model", "engine", "data"} <= names
