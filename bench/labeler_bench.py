"""Labeler benchmark: what the job machinery costs on top of the engine, and how fast submit is.

Measured in one run (`make bench`, or `python -m bench.labeler_bench`):
- end-to-end job throughput, 2,000 images, submit to last item done, on the embedded
  default (SQLite + SQLite broker) and on Redis + PostgreSQL, as a ratio of the raw
  engine's throughput on the same images at the same batch size (target >= 0.85). The
  worker is the Celery worker run in-process (`llava-labeler run`'s), so both sides
  share one loaded engine and the ratio isolates the labeler's overhead: database,
  broker, image reads, bookkeeping. On a shared machine the engine's own speed drifts
  between runs, so the table also gives the share of each job's wall time the engine was
  generating (its recorded engine time / the job's time), which no drift affects;
- the same job with the worker calling the predictor on 127.0.0.1 (the remote client),
  as a ratio of in-process;
- time to submit 100,000 items (manifest read, bulk insert, one task per batch
  enqueued) on SQLite and on PostgreSQL (target <= 10 s).
The demo model is used when it exists (settings engine.model), else a random tiny one.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from bench.engine_bench import sample_images
from engine.backend import Backend, GenerationRequest
from entrypoints.settings import Settings, get_settings
from labeler.jobs import JobSpec
from labeler.models import Prediction
from labeler.service import Labeler
from labeler.worker import InProcessWorker, load_engine

IMAGES = 2000
SUBMIT_ITEMS = 100_000
BATCH = 32
NEW_TOKENS = 16
POSTGRES = os.environ.get("LLAVA_LABELER_TEST_POSTGRES_URL", "postgresql+psycopg2://root@127.0.0.1:5432/test")
REDIS = os.environ.get("LLAVA_LABELER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 0), timeout=2):
            return True
    except OSError:
        return False


@contextmanager
def _postgres_database() -> Iterator[str]:
    """A throw-away PostgreSQL database."""
    name = f"labeler_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    finally:
        from labeler.db import _OPENED

        for database in _OPENED:
            database.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _settings(work: Path, model: str, database_url: str | None = None, broker_url: str | None = None) -> Settings:
    base = get_settings()
    return Settings(
        data_dir=work / "data",
        database_url=database_url or f"sqlite:///{work}/data/labeler.db",
        broker_url=broker_url or f"sqla+sqlite:///{work}/data/broker.db",
        engine={**base.engine.model_dump(), "model": model, "max_batch_size": BATCH},
        labeler={**base.labeler.model_dump(), "batch_size": BATCH, "queue": f"bench-{uuid.uuid4().hex[:8]}", "metrics_port": 0},
    )


def raw_engine_rate(engine: Backend, paths: list[Path]) -> float:
    """Images/s of the engine alone: the same files, in batches of BATCH.

    It runs in a thread of its own, as the in-process worker's batches do: torch's
    intra-op thread pool is per calling thread, and on a busy 2-core machine the main
    thread's pool was measured ten times slower, which would flatter the labeler.
    """
    requests = [GenerationRequest(image=p, task="caption", max_new_tokens=NEW_TOKENS) for p in paths]
    seconds: list[float] = []

    def run() -> None:
        started = time.perf_counter()
        for start in range(0, len(requests), BATCH):
            engine.generate(requests[start : start + BATCH])
        seconds.append(time.perf_counter() - started)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return len(requests) / seconds[0]


def job_rate(settings: Settings, engine: Backend, folder: Path) -> tuple[float, float]:
    """Images/s of a whole job (submit to last item done, through the broker and the database), and
    the share of that time the engine was generating (from the predictions' recorded engine time)."""
    labeler = Labeler(settings)
    with InProcessWorker(settings, engine):
        started = time.perf_counter()
        job = labeler.submit(str(folder), JobSpec(task="caption", max_new_tokens=NEW_TOKENS))
        while not (status := labeler.status(job.id)).finished:
            time.sleep(0.05)
        seconds = time.perf_counter() - started
    assert status.done == IMAGES, status
    with labeler.db.read() as session:
        engine_ms = session.scalar(select(func.sum(Prediction.latency_ms)).where(Prediction.job_id == job.id))
    return IMAGES / seconds, engine_ms / 1000 / seconds


def remote_job_rate(work: Path, model: str, folder: Path) -> float:
    """Images/s of the same job when the worker calls a predictor on 127.0.0.1 (`engine.url` set)."""
    from engine.predictor_process import PredictorProcess

    with PredictorProcess(model, args=["--max-batch-size", str(BATCH), "--max-wait-ms", "5"]) as server:
        settings = _settings(work, model)
        settings = settings.model_copy(update={"engine": settings.engine.model_copy(update={"url": server.url})})
        engine = load_engine(settings)
        engine.generate([GenerationRequest(image=folder / "00000.png", max_new_tokens=NEW_TOKENS)] * BATCH)  # warm-up
        return job_rate(settings, engine, folder)[0]


def submit_seconds(settings: Settings, manifest: Path) -> float:
    labeler = Labeler(settings)
    started = time.perf_counter()
    status = labeler.submit(str(manifest), JobSpec(task="caption"))
    seconds = time.perf_counter() - started
    assert status.total == SUBMIT_ITEMS, status
    labeler.cancel(status.id)  # the workers of a later run have nothing to do with it
    return seconds


def _model(work: Path, console: Console) -> tuple[str, str]:
    demo = get_settings().engine.model
    if (Path(demo) / "config.json").is_file():
        return demo, f"demo model ({demo})"
    from engine.tiny_model import build_tiny_model

    console.print("demo model not found: building a random tiny LLaVA-1.5…")
    return str(build_tiny_model(work / "tiny")), "random tiny model"


def main() -> dict:
    console = Console()
    services = _reachable(POSTGRES) and _reachable(REDIS)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, model_name = _model(work, console)
        folder = work / "images"
        folder.mkdir()
        for i, data in enumerate(sample_images(IMAGES)):
            (folder / f"{i:05d}.png").write_bytes(data)
        manifest = work / "many.jsonl"
        manifest.write_text("".join(f'{{"image": "images/00000.png", "metadata": {{"n": {n}}}}}\n' for n in range(SUBMIT_ITEMS)))
        engine = load_engine(_settings(work, model))
        engine.generate([GenerationRequest(image=folder / "00000.png", max_new_tokens=NEW_TOKENS)] * BATCH)  # warm-up
        console.print(f"labeler bench on the {model_name}: {IMAGES:,} images, batch {BATCH}, {NEW_TOKENS} new tokens…")
        paths = sorted(folder.iterdir())
        raw_before = raw_engine_rate(engine, paths)
        figures["embedded"], figures["embedded_engine_share"] = job_rate(_settings(work / "embedded", model), engine, folder)
        figures["submit_sqlite"] = submit_seconds(_settings(work / "submit", model), manifest)
        figures["remote"] = remote_job_rate(work / "remote", model, folder)
        if services:
            import redis

            with _postgres_database() as url:
                settings = _settings(work / "cluster", model, url, REDIS)
                figures["cluster"], figures["cluster_engine_share"] = job_rate(settings, engine, folder)
                submit_settings = _settings(work / "cluster-submit", model, url, REDIS)
                figures["submit_postgres"] = submit_seconds(submit_settings, manifest)
            client = redis.Redis.from_url(REDIS)
            for queue in (settings.labeler.queue, submit_settings.labeler.queue):
                client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        # The machine is shared: the raw rate is taken before and after the jobs and averaged.
        figures["raw"] = (raw_before + raw_engine_rate(engine, paths)) / 2

    table = Table(title=f"labeler: {model_name} on this CPU (one run; batch {BATCH})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("vs target", justify="right")
    raw = figures["raw"]
    table.add_row(f"raw engine, images/s ({IMAGES:,} images, mean of 2 runs)", f"{raw:.1f}", "")
    for key, label in (("embedded", "SQLite + SQLite broker"), ("cluster", "PostgreSQL + Redis")):
        if key in figures:
            ratio = figures[key] / raw
            table.add_row(f"job end to end, {label}, images/s", f"{figures[key]:.1f}", f"{ratio:.2f}x raw (>= 0.85)")
            share = figures[f"{key}_engine_share"]
            table.add_row("  share of the job's time the engine was busy", f"{share:.0%}", "labeler adds the rest")
    if "remote" in figures:
        ratio = figures["remote"] / figures["embedded"]
        table.add_row("job end to end through the predictor (remote client), images/s", f"{figures['remote']:.1f}",
                      f"{ratio:.2f}x in-process")
    for key, label in (("submit_sqlite", "SQLite, SQLite broker"), ("submit_postgres", "PostgreSQL, Redis broker")):
        if key in figures:
            table.add_row(f"submit {SUBMIT_ITEMS:,} items, {label}, s", f"{figures[key]:.1f}", "(<= 10 s)")
    if not services:
        table.add_row("PostgreSQL + Redis", "not reachable: skipped", "")
    console.print(table)
    return figures


if __name__ == "__main__":
    main()
