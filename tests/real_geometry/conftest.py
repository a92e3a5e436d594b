"""Fixtures at LLaVA-1.5's real geometry: the real LLaMA tokenizer, a narrow real-geometry model, the original LLaVA code.

The tokenizer is built once from `npm pack llama-tokenizer-js@1.2.2` into build/llama-tokenizer
(the cache `make test` fills); the model is what `llava-labeler model init-tiny --geometry` builds
(1 layer each, 64 wide, everything else as published); the original code is `llava-torch`
1.2.2.post1 (`pip install --no-deps`), read as plain modules. `real_predictor` serves that model
with `llava-labeler serve`; `shapes_336` is `llava-labeler data shapes` scaled to LLaVA's 336 px.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from engine.predictor_process import PredictorProcess

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_CACHE = REPO / "build" / "llama-tokenizer"
CLI = [str(Path(sys.executable).with_name("llava-labeler"))]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The `llava-labeler` command on this checkout's code, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


@pytest.fixture(scope="session")
def llama_tokenizer_dir() -> Path:
    """The real LLaMA tokenizer directory (tokenizer.json + a LlamaTokenizerFast configuration)."""
    from engine.llama_tokenizer import fetch_llama_tokenizer

    return fetch_llama_tokenizer(TOKENIZER_CACHE)


@pytest.fixture(scope="session")
def real_model_dir(tmp_path_factory: pytest.TempPathFactory, llama_tokenizer_dir: Path) -> Path:
    """A random llava-1.5-7b-geometry checkpoint, 64 wide with one layer each, built by the command."""
    out = tmp_path_factory.mktemp("real-geometry") / "model"
    done = run_cli("model", "init-tiny", str(out), "--geometry", "llava-1.5-7b", "--text-hidden", "64",
                   "--vision-hidden", "64", "--tokenizer", str(llama_tokenizer_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="session")
def real_backend(real_model_dir: Path):
    """The in-process backend on the real-geometry model."""
    from engine.backends.hf import HFBackend

    return HFBackend.load(real_model_dir)


@pytest.fixture(scope="session")
def real_predictor(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`llava-labeler serve` on the real-geometry model, on 127.0.0.1; stopped after the session."""
    log = tmp_path_factory.mktemp("real-predictor") / "server.log"
    with PredictorProcess(real_model_dir, env={"LLAVA_LABELER_SERVING__MAX_WAIT_MS": "20"}, log_path=log) as server:
        yield server


@pytest.fixture(scope="session")
def shapes_336(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`data shapes` (4 training and 2 held-out images) with every image scaled 5.25x: 64 px squares become 336 px."""
    out = tmp_path_factory.mktemp("shapes-336")
    done = run_cli("data", "shapes", "--out", str(out), "--n", "4", "--n-eval", "2")
    assert done.returncode == 0, done.stderr
    for path in (out / "images").rglob("*.png"):
        with Image.open(path) as image:
            scaled = image.resize((image.width * 336 // 64, image.height * 336 // 64), Image.Resampling.NEAREST)
        scaled.save(path)
    return out


@pytest.fixture(scope="session")
def original_llava() -> types.SimpleNamespace:
    """`llava/conversation.py` and `llava/mm_utils.py` of llava-torch 1.2.2.post1, loaded by file path.

    The package's `__init__` imports the whole model (`LlavaLlamaForCausalLM`, written for
    transformers 4.37), which none of the functions used here needs, so a bare `llava`
    package stands in for it while the files load. Nothing else is stubbed: mm_utils' own
    imports (torch, `transformers.StoppingCriteria`, `llava.constants`) are the real ones.
    """
    spec = importlib.util.find_spec("llava")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llava-torch is not installed: pip install --no-deps llava-torch==1.2.2.post1", pytrace=False)
    root = Path(next(iter(spec.submodule_search_locations)))
    package = types.ModuleType("llava")
    package.__path__ = [str(root)]
    loaded = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "llava", package)
        for name in ("constants", "conversation", "mm_utils"):
            module_spec = importlib.util.spec_from_file_location(f"llava.{name}", root / f"{name}.py")
            module = importlib.util.module_from_spec(module_spec)
            patch.setitem(sys.modules, module_spec.name, module)
            module_spec.loader.exec_module(module)
            loaded[name] = module
    return types.SimpleNamespace(**loaded)
