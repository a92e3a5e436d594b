"""The dependency rules of docs/architecture.md, read from the sources themselves.

Every import counts, at module level and inside functions alike: a cycle hidden in a
function body is still a cycle. The packages depend one way (`ui -> labeler -> engine`,
`training -> engine`, the composition root `entrypoints` above all and imported by none).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "labeler", "training", "ui", "entrypoints")
# What each package may import of ours (besides itself).
ALLOWED = {
    "engine": set(),
    "training": {"engine"},
    "labeler": {"engine"},
    "ui": {"labeler", "engine"},
    "entrypoints": {"engine", "labeler", "training", "ui"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Our modules that `path` imports anywhere in its body (`from x import y` counts `x.y` when it is a module)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            # importing a package runs its __init__, but a submodule importing its own package's
            # __init__ is not a cycle worth forbidding when __init__ imports nothing back
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_depend_one_way(package: str) -> None:
    wrong = sorted(
        f"{source} imports {target}"
        for source, targets in _graph().items()
        if source.split(".")[0] == package
        for target in targets
        if (top := target.split(".")[0]) != package and top not in ALLOWED[package]
    )
    assert not wrong, "\n".join(wrong)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_command_module_is_mounted() -> None:
    import typer

    from entrypoints.cli.main import app

    names = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    expected = {"predict", "model", "serve", "engine", "submit", "status", "run", "worker", "export", "retrain"}
    assert expected | {"loop-demo", "data", "train", "eval", "demo-model", "ui"} <= names


def test_the_configuration_reference_is_current() -> None:
    from entrypoints import config_reference

    assert config_reference.PAGE.read_text() == config_reference.render(), (
        "docs/configuration.md is stale: python -m entrypoints.config_reference > docs/configuration.md"
    )
