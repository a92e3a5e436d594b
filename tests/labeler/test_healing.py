"""Healing without a person: a broker that loses its messages, a restarted Redis or PostgreSQL,
a job no worker serves. Real worker processes on the tiny model; every job must end with
every item holding exactly one prediction, and nobody runs `resume`.

The faults hit servers of this module's own (a Redis and a PostgreSQL cluster started
here, on free ports, and stopped at teardown), so stopping or flushing them can never
disturb the shared servers other tests and CI runs are using at the same time.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from labeler.jobs import JobSpec, JobStatus
from labeler.models import Item, Prediction, WorkerBeat
from labeler.service import Labeler

from .conftest import CLI, _settings_env

ITEMS = 24
FAST = dict(batch_size=2, visibility_timeout_s=6, stale_after_s=2, heartbeat_s=0.5)
PG_BIN = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]) if glob.glob("/usr/lib/postgresql/*/bin") else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PrivateRedis:
    """A Redis server of this test's own, without persistence (a restart loses every message)."""

    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
        _wait_until_listening(self.port, "redis-server")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def flushdb(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        client.flushdb()
        client.close()


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of this test's own (initdb as the postgres user; trust auth for `root`)."""

    port: int
    data: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://root@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        command = ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data / "db"), "-w", "-o", options, *args]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def init(self) -> None:
        initdb = ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(self.data / "db"), "-U", "root", "--auth=trust"]
        subprocess.run(initdb, check=True, stdout=subprocess.DEVNULL, timeout=120)
        self._pg_ctl("-l", str(self.data / "server.log"), "start")

    def restart(self) -> None:
        self._pg_ctl("-m", "fast", "-l", str(self.data / "server.log"), "restart")

    def stop(self) -> None:
        self._pg_ctl("-m", "immediate", "stop")


def _wait_until_listening(port: int, what: str) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not start listening on port {port}")


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis(_free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    if PG_BIN is None or shutil.which("runuser") is None:
        pytest.fail("the PostgreSQL server binaries (/usr/lib/postgresql/*/bin) and runuser are needed", pytrace=False)
    data = Path(tempfile.mkdtemp(prefix="labeler-healing-pg-"))
    shutil.chown(data, "postgres", "postgres")
    server = PrivatePostgres(_free_port(), data)
    server.init()
    yield server
    from labeler.db import _OPENED

    for database in _OPENED:  # connections to it die with it; do not hand them to a later test
        if database.url == server.url:
            database.dispose()
    server.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def image_folder(tmp_path: Path, png) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(ITEMS):
        (folder / f"{i:03d}.png").write_bytes(png(i))
    return folder


def _states(labeler: Labeler, job_id: int) -> dict[str, int]:
    with labeler.db.read() as session:
        return dict(session.execute(select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)).all())


def _assert_every_item_has_exactly_one_prediction(labeler: Labeler, job_id: int) -> None:
    status = labeler.status(job_id)
    assert (status.status, status.done, status.failed, status.cancelled) == ("completed", ITEMS, 0, 0), status
    with labeler.db.read() as session:
        per_item = dict(
            session.execute(select(Prediction.item_id, func.count()).where(Prediction.job_id == job_id).group_by(Prediction.item_id)).all()
        )
    assert len(per_item) == ITEMS and set(per_item.values()) == {1}, f"every item has exactly one prediction: {per_item}"


def _heals_after(fault: Callable[[], None], settings, start_worker, wait_for, folder: Path) -> None:
    """Submit, let one worker get part-way, inject `fault`, and wait for the job to complete by itself."""
    labeler = Labeler(settings)
    worker = start_worker(settings)
    job = labeler.submit(str(folder), JobSpec(task="caption", max_new_tokens=16))
    wait_for(lambda: _states(labeler, job.id).get("done", 0) >= 4, 180, "the worker to be part-way through the job", [worker.log])
    fault()
    assert _states(labeler, job.id).get("pending", 0) > 0, "the fault must land while items are still waiting"
    wait_for(lambda: labeler.status(job.id).finished, 180, "the job to complete with nobody's help", [worker.log])
    _assert_every_item_has_exactly_one_prediction(labeler, job.id)


def test_a_flushed_redis_queue_heals(private_redis, labeler_settings, start_worker, wait_for, image_folder, new_pg_database) -> None:
    settings = labeler_settings(database_url=new_pg_database(), broker_url=private_redis.url, **FAST)
    _heals_after(private_redis.flushdb, settings, start_worker, wait_for, image_folder)


def test_deleted_sqlite_broker_messages_heal(labeler_settings, start_worker, wait_for, image_folder) -> None:
    settings = labeler_settings(**FAST)
    broker = make_url(settings.broker_url.removeprefix("sqla+")).database

    def delete_messages() -> None:
        with sqlite3.connect(broker, timeout=60) as connection:
            connection.execute("DELETE FROM kombu_message")

    _heals_after(delete_messages, settings, start_worker, wait_for, image_folder)


def test_a_restarted_redis_heals(private_redis, labeler_settings, start_worker, wait_for, image_folder, new_pg_database) -> None:
    settings = labeler_settings(database_url=new_pg_database(), broker_url=private_redis.url, **FAST)

    def restart() -> None:
        private_redis.stop()
        private_redis.start()

    _heals_after(restart, settings, start_worker, wait_for, image_folder)


def test_a_restarted_postgres_heals(private_postgres, private_redis, labeler_settings, start_worker, wait_for, image_folder) -> None:
    settings = labeler_settings(database_url=private_postgres.url, broker_url=private_redis.url, **FAST)
    _heals_after(private_postgres.restart, settings, start_worker, wait_for, image_folder)


def _cli_status(settings, job_id: int, tmp_path: Path) -> str:
    env = {**os.environ, **_settings_env(settings)}
    result = subprocess.run([str(CLI), "status", str(job_id)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_job_without_a_live_worker_shows_stalled(labeler_settings, start_worker, wait_for, image_folder, tmp_path) -> None:
    settings = labeler_settings(**{**FAST, "heartbeat_s": 0.2})
    labeler = Labeler(settings)
    job = labeler.submit(str(image_folder), JobSpec(task="caption", max_new_tokens=16))

    wait_for(lambda: labeler.status(job.id).stalled is not None, 60, "the job to show as stalled")
    stalled: JobStatus = labeler.status(job.id)
    assert (stalled.stalled, stalled.eta_seconds) == ("no live worker", None)
    printed = _cli_status(settings, job.id, tmp_path)
    assert "stalled: no live worker" in printed and "ETA" not in printed, printed

    worker = start_worker(settings)
    wait_for(lambda: labeler.status(job.id).finished, 180, "a worker to finish the job", [worker.log])
    finished = labeler.status(job.id)
    assert finished.stalled is None
    _assert_every_item_has_exactly_one_prediction(labeler, job.id)
    with labeler.db.read() as session:
        beat = session.scalars(select(WorkerBeat).where(WorkerBeat.queue == settings.labeler.queue)).one()
    assert (beat.pid, beat.job_id) == (worker.process.pid, job.id), "the heartbeat names the worker and its last job"

    worker.process.terminate()  # a clean stop deletes the heartbeat: no waiting for it to age out
    worker.process.wait(timeout=60)
    with labeler.db.read() as session:
        assert session.scalars(select(WorkerBeat)).all() == []


@pytest.mark.parametrize("broker", ["sqlite", "redis"])
def test_sigterm_drains_and_the_next_worker_waits_out_no_lease(
    broker, private_redis, labeler_settings, start_worker, wait_for, image_folder, new_pg_database
) -> None:
    """A rolling update: the old worker finishes the batch it holds and exits; nothing it took stays
    leased, so the new worker finishes the job long before a lease (10 minutes here) could expire."""
    stack = dict(database_url=new_pg_database(), broker_url=private_redis.url) if broker == "redis" else {}
    settings = labeler_settings(**{**FAST, "visibility_timeout_s": 600, "worker_concurrency": 2}, **stack)
    labeler = Labeler(settings)
    old = start_worker(settings)
    job = labeler.submit(str(image_folder), JobSpec(task="caption", max_new_tokens=16))
    wait_for(lambda: _states(labeler, job.id).get("done", 0) >= 4, 180, "the old worker to be part-way through", [old.log])

    old.process.terminate()
    assert old.process.wait(timeout=120) == 0, old.log.read_text()[-3000:]
    states = _states(labeler, job.id)
    assert states.get("running", 0) == 0, f"the drained worker left items leased: {states}"
    assert states.get("pending", 0) > 0, "the stop must land while items are still waiting"

    new = start_worker(settings)
    wait_for(lambda: labeler.status(job.id).finished, 120, "the new worker to finish the job", [new.log])
    _assert_every_item_has_exactly_one_prediction(labeler, job.id)
