"""The original LLaVA scorers (llava-torch 1.2.2.post1, `llava/eval/`) run as their scripts run, as test oracles.

The package's `__init__` imports the whole model (transformers 4.37 code) that no scorer needs,
so bare `llava` and `llava.eval` packages stand in for it while the scorer files load by path;
nothing else is stubbed. `run_original(script, *args)` runs a scorer's `__main__` with those
arguments and returns what it printed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import runpy
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def _llava_root() -> Path:
    spec = importlib.util.find_spec("llava")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llava-torch is not installed: pip install --no-deps llava-torch==1.2.2.post1", pytrace=False)
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture
def original_eval(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    """`llava/eval/` of llava-torch: `.m4c` (m4c_evaluator, loaded) and `.run(script, *args)` (a scorer's main)."""
    root = _llava_root()
    for name, path in (("llava", root), ("llava.eval", root / "eval")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        monkeypatch.setitem(sys.modules, name, package)
    spec = importlib.util.spec_from_file_location("llava.eval.m4c_evaluator", root / "eval" / "m4c_evaluator.py")
    m4c = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, m4c)
    spec.loader.exec_module(m4c)

    def run(script: str, *args: str) -> str:
        printed = io.StringIO()
        monkeypatch.setattr(sys, "argv", [script, *args])
        with contextlib.redirect_stdout(printed):
            runpy.run_path(str(root / "eval" / script), run_name="__main__")
        return printed.getvalue()

    yield types.SimpleNamespace(m4c=m4c, run=run)


@pytest.fixture
def png() -> Callable[[Path], Path]:
    """png(path): a small image written at path (folders made)."""
    from PIL import Image

    def write(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
        return path

    return write
