"""Shared fixtures: the tiny model, and the real PostgreSQL and Redis the tests run against.

Service URLs come from LLAVA_LABELER_TEST_POSTGRES_URL / LLAVA_LABELER_TEST_REDIS_URL,
defaulting to the local servers. A test that needs an unreachable service skips with the
reason, except where LLAVA_LABELER_REQUIRE_SERVICES=1 (CI), where it fails.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
ARTIFACTS = REPO / "test-artifacts"


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 0), timeout=2):
            return True
    except OSError:
        return False


def _service(env: str, default: str, what: str) -> str:
    url = os.environ.get(env, default)
    if _reachable(url):
        return url
    message = f"{what} is not reachable at {url} (set {env})"
    if os.environ.get("LLAVA_LABELER_REQUIRE_SERVICES") == "1":
        pytest.fail(message + "; CI requires it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A SQLAlchemy URL of a real PostgreSQL database."""
    return _service("LLAVA_LABELER_TEST_POSTGRES_URL", "postgresql+psycopg2://root@127.0.0.1:5432/test", "PostgreSQL")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A URL of a real Redis server (database 15, flushed by the tests that use it)."""
    return _service("LLAVA_LABELER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15", "Redis")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny LLaVA-1.5 checkpoint (llava-hf layout), built once per session."""
    from engine.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir: Path):
    """The in-process backend on the tiny model."""
    from engine.backends.hf import HFBackend

    return HFBackend.load(tiny_model_dir)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests keep files worth looking at after a run (screenshots, reports)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
