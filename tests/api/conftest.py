"""Fixtures for the batch API: a real `llava-labeler api` process on 127.0.0.1 and real workers,
on the demo model and shapes-world images (the labeler's fixtures, reused)."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.labeler.conftest import (  # noqa: F401  (fixtures used by this folder's tests)
    CLI,
    REPO,
    _make_settings,
    _settings_env,
    new_pg_database,
    pg_database,
    png,
    redis_broker,
    start_worker,
)
from training.world import Scene, render, sample_scene

DEMO_MODEL = REPO / "training" / "demo_model"
SHAPES_SCHEMA = json.loads((REPO / "tests" / "data" / "schemas" / "shapes.json").read_text())
API_KEY = "test-key-" + "x" * 16
MAX_REQUEST_BYTES = 200_000


@dataclass
class ApiServer:
    url: str  # ends with /v1
    stack: str  # sqlite | redis+postgres
    settings: object
    images: Path  # an allowed root, with the scenes' PNGs
    scenes: list[Scene]
    log: Path

    def png(self, index: int) -> bytes:
        return (self.images / f"{index}.png").read_bytes()

    def data_url(self, index: int) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png(index)).decode()


@pytest.fixture(params=["sqlite", "redis+postgres"])
def api_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiServer]:
    """`llava-labeler api` on a free loopback port with an API key, a small request limit and an allowed root,
    on the embedded stack (SQLite) and the cluster's (PostgreSQL and Redis)."""
    images = tmp_path / "images"
    images.mkdir()
    rng = random.Random(7)
    scenes = [sample_scene(rng, noise_fraction=0.0, non_square_fraction=0.0) for _ in range(4)]
    for index, scene in enumerate(scenes):
        buffer = io.BytesIO()
        render(scene).save(buffer, "PNG")
        (images / f"{index}.png").write_bytes(buffer.getvalue())
    services = {}
    if request.param != "sqlite":
        broker, queue = request.getfixturevalue("redis_broker")
        services = dict(database_url=request.getfixturevalue("pg_database"), broker_url=broker, queue=queue)
    settings = _make_settings(tmp_path, DEMO_MODEL, batch_size=4, heartbeat_s=1.0, **services)
    settings.fetch.allowed_roots = [images]
    env = {
        **os.environ,
        **_settings_env(settings),
        "LLAVA_LABELER_FETCH__ALLOWED_ROOTS": json.dumps([str(images)]),
        "LLAVA_LABELER_API__API_KEY": API_KEY,
        "LLAVA_LABELER_API__PORT": "0",
        "LLAVA_LABELER_API__MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "api.log"
    handle = log.open("w")
    process = subprocess.Popen([str(CLI), "api"], cwd=tmp_path, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"batch API on (http://\S+/v1)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, f"the API did not start:\n{log.read_text()}"
            time.sleep(0.1)
        yield ApiServer(found.group(1), request.param, settings, images, scenes, log)
    finally:
        process.terminate()
        process.wait(timeout=30)
        handle.close()


@pytest.fixture
def batch_line() -> Callable[..., dict]:
    """batch_line(custom_id, image_url, text=..., schema=None, **body) -> one input line of OpenAI's batch format."""

    def line(custom_id: str, image_url: str, text: str = "", schema: dict | None = None, **body) -> dict:
        content = [{"type": "text", "text": text}] if text else []
        content.append({"type": "image_url", "image_url": {"url": image_url}})
        request = {"model": "llava", "messages": [{"role": "user", "content": content}], "max_tokens": 48, **body}
        if schema is not None:
            request["response_format"] = {"type": "json_schema", "json_schema": {"name": "shapes", "schema": schema}}
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request}

    return line
