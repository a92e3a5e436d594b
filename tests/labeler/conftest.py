"""Fixtures for the labeler: fresh databases, brokers, image folders, and real worker processes.

Every PostgreSQL test database is created for the session and dropped after it; every
Redis test uses its own queue name (and deletes its keys), so parallel runs and other
test suites on the same servers do not see each other. Worker processes run under
`nice` in their own process groups and are killed at teardown whatever happened.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from entrypoints.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("llava-labeler")


def _png_bytes(seed: int, size: tuple[int, int] = (96, 72)) -> bytes:
    """A small image with noise (so truncating it really breaks it)."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3)))
    ImageDraw.Draw(image).ellipse((10, 10, 50, 50), fill=(200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def new_pg_database(postgres_url: str) -> Iterator[Callable[[], str]]:
    """Create PostgreSQL databases of our own on demand; all are dropped at the end of the session."""
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    names: list[str] = []

    def create() -> str:
        name = f"labeler_test_{uuid.uuid4().hex[:10]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        names.append(name)
        return make_url(postgres_url).set(database=name).render_as_string(hide_password=False)

    yield create
    from labeler.db import _OPENED

    for database in _OPENED:
        database.dispose()
    with admin.connect() as connection:
        for name in names:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_database(new_pg_database: Callable[[], str]) -> str:
    """One PostgreSQL database shared by the session's tests (each test uses its own jobs)."""
    return new_pg_database()


@pytest.fixture
def redis_broker(redis_url: str) -> Iterator[tuple[str, str]]:
    """(broker URL, a queue name of our own); the queue's keys are deleted afterwards."""
    import redis

    queue = f"labeler-test-{uuid.uuid4().hex[:10]}"
    yield redis_url, queue
    client = redis.Redis.from_url(redis_url)
    # kombu keeps unacked messages (a killed worker's) in db-wide keys; any consumer would later put them back.
    for tag, value in client.hscan_iter("unacked"):
        if queue.encode() in value:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
    keys = list(client.scan_iter(match=f"*{queue}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _make_settings(tmp: Path, model: Path, *, database_url: str | None = None, broker_url: str | None = None, **labeler) -> Settings:
    return Settings(
        data_dir=tmp / "data",
        database_url=database_url or f"sqlite:///{tmp}/data/labeler.db",
        broker_url=broker_url or f"sqla+sqlite:///{tmp}/data/broker.db",
        engine={"model": str(model), "max_batch_size": 8},
        labeler={"queue": f"labeler-test-{uuid.uuid4().hex[:10]}", "metrics_port": 0, **labeler},
    )


def _settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as LLAVA_LABELER_* environment variables (for worker processes)."""
    env = {
        "LLAVA_LABELER_DATA_DIR": str(settings.data_dir),
        "LLAVA_LABELER_DATABASE_URL": settings.database_url,
        "LLAVA_LABELER_BROKER_URL": settings.broker_url,
        "LLAVA_LABELER_ENGINE__MODEL": settings.engine.model,
        "LLAVA_LABELER_ENGINE__MAX_BATCH_SIZE": str(settings.engine.max_batch_size),
    }
    for key, value in settings.labeler.model_dump().items():
        env[f"LLAVA_LABELER_LABELER__{key.upper()}"] = str(value)
    return env


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    log: Path

    def kill(self) -> None:
        """SIGKILL the worker and its pool children (the whole process group), as a node loss would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    """Start `llava-labeler worker` processes; all are killed at teardown, even when the test failed."""
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        env = {**os.environ, **_settings_env(settings), "PYTHONUNBUFFERED": "1"}
        with log.open("w") as handle:
            process = subprocess.Popen(
                ["nice", "-n", "10", str(CLI), "worker", "--loglevel", "INFO"],
                cwd=tmp_path,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(process, log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def _wait_for(condition: Callable[[], bool], timeout: float, what: str, logs: list[Path] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    tails = "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in logs if log.exists())
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


@pytest.fixture
def mixed_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Good images (one nested) among corrupt, empty and non-image files; returns (folder, bad name -> reason words)."""
    folder = tmp_path / "images"
    (folder / "nested" / "deeper").mkdir(parents=True)
    for i in range(5):
        (folder / f"good-{i}.png").write_bytes(_png_bytes(i))
    (folder / "nested" / "deeper" / "good-5.PNG").write_bytes(_png_bytes(5))
    (folder / "nested" / "truncated.png").write_bytes(_png_bytes(6)[:400])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes-renamed.png").write_text("this is a text file, not a picture\n")
    (folder / "readme.txt").write_text("not picked up: not an image extension\n")
    bad = {
        "truncated.png": "corrupt or truncated image",
        "empty.jpg": "empty file",
        "notes-renamed.png": "not an image",
    }
    return folder, bad


@pytest.fixture
def png() -> Callable[..., bytes]:
    """png(seed) -> the bytes of a small noisy PNG."""
    return _png_bytes


@pytest.fixture
def labeler_settings(tmp_path: Path, tiny_model_dir: Path) -> Callable[..., Settings]:
    """labeler_settings(database_url=..., broker_url=..., **labeler) -> Settings with this test's files and the tiny model."""
    return partial(_make_settings, tmp_path, tiny_model_dir)


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """wait_for(condition, timeout, what, logs) polls until true or fails with the logs' tails."""
    return _wait_for
