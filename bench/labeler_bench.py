"""Labeler benchmark: what the job machinery costs on top of the engine.

Measured in one run (`make bench`, or `python -m bench.labeler_bench`):
- end-to-end job throughput, submit to last item done, for a caption job and a JSON job
  (the shapes schema) over the same images, on the embedded default (SQLite + SQLite
  broker) and on Redis + PostgreSQL, as a ratio of the raw engine's throughput on the same
  requests at the same batch size (target >= 0.95). The worker is the Celery worker run
  in-process (`llava-labeler run`'s, with `worker_concurrency` batches in flight), so both
  sides share one loaded engine and the ratio isolates the labeler's overhead: database,
  broker, image reads, bookkeeping. The same job with one batch in flight (no pipelining)
  is measured beside it. On a shared machine the engine's own speed drifts between runs,
  so the table also gives the share of each job's wall time the engine was generating
  (its recorded engine time / the job's time), which no drift affects;
- the same jobs against a GPU-like engine (`SleepingEngine`, a named fake: it answers what
  the real engine answered for each image after sleeping the real engine's measured time
  for the batch, holding no CPU, as a process waiting on a GPU does): on 2 shared cores the
  worker's own threads slow a CPU engine, so these rows are what the job system itself
  costs, the figure a GPU pod would see (target >= 0.95); these jobs list each image four
  times (4,096 items, the cache off) so that starting a job weighs as little as in a real one;
- the caption job with the worker calling the predictor on 127.0.0.1 (the remote client),
  as a ratio of in-process (target >= 0.9).
Million-item submit, status and export: `bench/million_bench.py`.
The demo model is used when it exists (settings engine.model), else a random tiny one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.engine_bench import sample_images
from engine.backend import Backend, GenerationRequest, GenerationResult
from entrypoints.settings import Settings, get_settings
from labeler.jobs import JobSpec
from labeler.service import Labeler
from labeler.worker import InProcessWorker, load_engine
from training.world import shapes_schema

IMAGES = 1024
GPU_LIKE_ITEMS = 4096  # the GPU-like engine's jobs: start-up (submit, first message) is a smaller share, as in real jobs
BATCH = 32
SPECS = {  # no cache: the bench's images repeat, and every item must be generated to compare with the raw engine
    "caption": JobSpec(task="caption", max_new_tokens=16, use_cache=False),
    "JSON": JobSpec(task="json", json_schema=shapes_schema(), max_new_tokens=64, use_cache=False),
}
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


def _settings(work: Path, model: str, database_url: str | None = None, broker_url: str | None = None, in_flight: int = 2) -> Settings:
    base = get_settings()
    labeler = {"batch_size": BATCH, "queue": f"bench-{uuid.uuid4().hex[:8]}", "metrics_port": 0, "worker_concurrency": in_flight}
    return Settings(
        data_dir=work / "data",
        database_url=database_url or f"sqlite:///{work}/data/labeler.db",
        broker_url=broker_url or f"sqla+sqlite:///{work}/data/broker.db",
        engine={**base.engine.model_dump(), "model": model, "max_batch_size": BATCH},
        labeler={**base.labeler.model_dump(), **labeler},
    )


def raw_engine_rate(engine: Backend, paths: list[Path], spec: JobSpec) -> tuple[float, dict[str, GenerationResult]]:
    """Images/s of the engine alone: the same requests, in batches of BATCH; and its answer per image (by hash).

    It runs in a thread of its own, as the in-process worker's batches do: torch's
    intra-op thread pool is per calling thread, and on a busy 2-core machine the main
    thread's pool was measured ten times slower, which would flatter the labeler.
    """
    images = [p.read_bytes() for p in paths]
    requests = [GenerationRequest.of(spec, image) for image in images]
    seconds: list[float] = []
    results: list[GenerationResult] = []

    def run() -> None:
        started = time.perf_counter()
        for start in range(0, len(requests), BATCH):
            results.extend(engine.generate(requests[start : start + BATCH]))
        seconds.append(time.perf_counter() - started)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return len(requests) / seconds[0], {_key(image): result for image, result in zip(images, results, strict=True)}


def _key(image: bytes | str | Path) -> str:
    return hashlib.sha256(image if isinstance(image, bytes) else Path(image).read_bytes()).hexdigest()


class SleepingEngine:
    """A named fake of an engine on a GPU: each batch sleeps `seconds_per_image` per request (the real
    engine's measured time), holding no CPU and no GIL, and returns what the real engine answered
    for each image. What a job then loses against `1 / seconds_per_image` is the job system's alone."""

    def __init__(self, engine: Backend, answers: dict[str, GenerationResult], seconds_per_image: float):
        self.engine, self.answers, self.seconds_per_image = engine, answers, seconds_per_image

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        time.sleep(self.seconds_per_image * len(requests))
        return [replace(self.answers[_key(request.image)]) for request in requests]  # a copy: the worker may amend it

    def __getattr__(self, name: str):
        return getattr(self.engine, name)


class TimedEngine:
    """The engine, with the seconds it spent generating (inside the worker's lock, not waiting on it)."""

    def __init__(self, engine: Backend):
        self.engine, self.busy = engine, 0.0

    def generate(self, requests):
        started = time.perf_counter()
        try:
            return self.engine.generate(requests)
        finally:
            self.busy += time.perf_counter() - started

    def __getattr__(self, name: str):
        return getattr(self.engine, name)


def job_rate(settings: Settings, engine: Backend, source: Path, spec: JobSpec, items: int | None = None) -> tuple[float, float]:
    """Images/s of a whole job of `items` (submit to last item done, through the broker and the
    database; IMAGES by default), and the share of that time the engine was generating."""
    items = items or IMAGES
    labeler = Labeler(settings)
    timed = TimedEngine(engine)
    with InProcessWorker(settings, timed):  # type: ignore[arg-type]
        started = time.perf_counter()
        job = labeler.submit(str(source), spec)
        while not (status := labeler.status(job.id)).finished:
            time.sleep(0.05)
        seconds = time.perf_counter() - started
    assert status.done + status.failed == items and not status.cache_hits, status
    return items / seconds, timed.busy / seconds


def remote_job_rate(work: Path, model: str, folder: Path) -> float:
    """Images/s of the caption job when the worker calls a predictor on 127.0.0.1 (`engine.url` set)."""
    from engine.predictor_process import PredictorProcess

    spec = SPECS["caption"]
    with PredictorProcess(model, args=["--max-batch-size", str(BATCH * 2), "--max-wait-ms", "5"]) as server:
        settings = _settings(work, model, in_flight=4)
        settings = settings.model_copy(update={"engine": settings.engine.model_copy(update={"url": server.url})})
        engine = load_engine(settings)
        engine.generate([GenerationRequest.of(spec, folder / "00000.png")] * BATCH)  # warm-up
        return job_rate(settings, engine, folder, spec)[0]


def _forget_queue(settings: Settings) -> None:
    """Delete a run's Redis queue and its binding (each run has a queue of its own)."""
    import redis

    redis.Redis.from_url(REDIS).delete(settings.labeler.queue, f"_kombu.binding.{settings.labeler.queue}")


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
        engine = load_engine(_settings(work, model))
        engine.generate([GenerationRequest.of(SPECS["caption"], folder / "00000.png")] * BATCH)  # warm-up
        console.print(f"labeler bench on the {model_name}: {IMAGES:,} images, batch {BATCH}…")
        paths = sorted(folder.iterdir())
        manifest = work / "gpu-like.jsonl"  # each image GPU_LIKE_ITEMS // IMAGES times
        manifest.write_text("".join(json.dumps({"image": str(p)}) + "\n" for p in paths * (GPU_LIKE_ITEMS // IMAGES)))
        for task, spec in SPECS.items():
            raw_before, answers = raw_engine_rate(engine, paths, spec)
            for depth in (1, 2):
                settings = _settings(work / f"embedded-{task}-{depth}", model, in_flight=depth)
                figures[f"{task} embedded {depth}"], figures[f"{task} embedded {depth} share"] = job_rate(settings, engine, folder, spec)
            if services:
                with _postgres_database() as url:
                    settings = _settings(work / f"cluster-{task}", model, url, REDIS)
                    figures[f"{task} cluster 2"], figures[f"{task} cluster 2 share"] = job_rate(settings, engine, folder, spec)
                _forget_queue(settings)
            # The machine is shared: the raw rate is taken before and after the jobs and averaged.
            figures[f"{task} raw"] = (raw_before + raw_engine_rate(engine, paths, spec)[0]) / 2
            gpu_like = SleepingEngine(engine, answers, 1 / figures[f"{task} raw"])  # as cheap in CPU as a GPU: a longer job
            for key, url, broker in (("gpu-like embedded 2", None, None), ("gpu-like cluster 2", POSTGRES, REDIS)):
                if url is None or services:
                    with _postgres_database() if url else contextlib.nullcontext() as database:
                        settings = _settings(work / f"{key}-{task}".replace(" ", "-"), model, database, broker)
                        figures[f"{task} {key}"], figures[f"{task} {key} share"] = job_rate(settings, gpu_like, manifest, spec, GPU_LIKE_ITEMS)
                    if url:
                        _forget_queue(settings)
        figures["remote"] = remote_job_rate(work / "remote", model, folder)

    table = Table(title=f"labeler: {model_name} on this CPU (one run; batch {BATCH}, {IMAGES:,} images)")
    table.add_column("measure")
    table.add_column("images/s", justify="right")
    table.add_column("vs the raw engine", justify="right")
    table.add_column("engine busy", justify="right")
    for task in SPECS:
        raw = figures[f"{task} raw"]
        table.add_row(f"{task}: raw engine (mean of 2 runs)", f"{raw:.1f}", "", "")
        rows = (
            ("embedded 1", "SQLite, one batch in flight"),
            ("embedded 2", "SQLite, two in flight (default)"),
            ("cluster 2", "PostgreSQL + Redis, two in flight"),
            ("gpu-like embedded 2", f"SQLite, two in flight, GPU-like engine, {GPU_LIKE_ITEMS:,} items"),
            ("gpu-like cluster 2", f"PostgreSQL + Redis, two in flight, GPU-like engine, {GPU_LIKE_ITEMS:,} items"),
        )
        for key, label in rows:
            if f"{task} {key}" in figures:
                rate, share = figures[f"{task} {key}"], figures[f"{task} {key} share"]
                table.add_row(f"{task}: job, {label}", f"{rate:.1f}", f"{rate / raw:.2f}x (>= 0.95)", f"{share:.0%}")
    remote = figures["remote"]
    table.add_row(
        "caption: job through the predictor, 4 in flight", f"{remote:.1f}", f"{remote / figures['caption embedded 2']:.2f}x in-process (>= 0.9)", ""
    )
    if not services:
        table.add_row("PostgreSQL + Redis", "not reachable: skipped", "", "")
    console.print(table)
    return figures


if __name__ == "__main__":
    main()
