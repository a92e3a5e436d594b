"""Prediction cache benchmark: a 10,000-item JSON job over 1,000 distinct images generates about 1,000 times.

Measured in one run (`make bench`, or `python -m bench.cache_bench`) on the shapes world with
the demo model (settings engine.model; a random tiny model if it is missing): 1,000 fresh
images, a manifest naming each ten times in a shuffled order, one JSON job on the embedded
default with the cache on (the default); then the same 1,000 distinct images once more as a
`--no-cache` job (1,000 items, not 10,000, to keep the run short: its time is what generating
each image once costs, and ten times it is what the 10,000 items cost without the cache).
The table gives how many generations each job ran, the cache hits, and the job times.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from bench.labeler_bench import _model, _settings
from bench.trust_bench import SEED, shapes_manifest
from labeler.jobs import JobSpec, JobStatus
from labeler.models import Prediction
from labeler.service import Labeler
from labeler.worker import InProcessWorker, load_engine
from training.world import shapes_schema

IMAGES = 1_000
REPEATS = 10


def repeated_manifest(manifest: Path, repeats: int, seed: int = SEED) -> Path:
    """`manifest`'s lines `repeats` times each, shuffled: the same images submitted again and again."""
    lines = manifest.read_text().splitlines() * repeats
    random.Random(seed).shuffle(lines)
    out = manifest.with_name(f"{manifest.stem}-x{repeats}.jsonl")
    out.write_text("\n".join(lines) + "\n")
    return out


def generations(labeler: Labeler, job_id: int) -> int:
    """How many of the job's predictions the engine generated (the rest are cache copies)."""
    with labeler.db.read() as session:
        return session.scalar(select(func.count()).where(Prediction.job_id == job_id, Prediction.cached.is_(False))) or 0


def run_job(labeler: Labeler, source: Path, spec: JobSpec) -> tuple[JobStatus, float]:
    started = time.perf_counter()
    job = labeler.submit(str(source), spec)
    while not (status := labeler.status(job.id)).finished:
        time.sleep(0.2)
    return status, time.perf_counter() - started


def main() -> dict:
    console = Console()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        distinct = shapes_manifest(work / "shapes", IMAGES)
        repeated = repeated_manifest(distinct, REPEATS)
        model, model_name = _model(work, console)
        settings = _settings(work, model)
        labeler = Labeler(settings)
        spec = JobSpec(task="json", json_schema=shapes_schema())  # the budget: the schema's token bound
        console.print(f"cache bench on the {model_name}: {IMAGES * REPEATS:,} items over {IMAGES:,} images…")
        with InProcessWorker(settings, load_engine(settings)):
            cached, cached_s = run_job(labeler, repeated, spec)
            fresh, fresh_s = run_job(labeler, distinct, spec.model_copy(update={"use_cache": False}))
        figures.update(
            cached_generations=generations(labeler, cached.id),
            cached_hits=cached.cache_hits,
            cached_s=cached_s,
            no_cache_generations=generations(labeler, fresh.id),
            no_cache_s=fresh_s,
        )
    table = Table(title=f"prediction cache: {model_name}, JSON, max_new_tokens {spec.max_new_tokens} (the schema's bound)")
    for column in ("job", "items", "generated", "cache hits", "time"):
        table.add_column(column, justify="left" if column == "job" else "right")
    table.add_row(
        f"each image {REPEATS}×, cache on", f"{cached.total:,}", f"{figures['cached_generations']:,}", f"{cached.cache_hits:,}",
        f"{cached_s:.1f} s",
    )  # fmt: skip
    table.add_row("each image 1×, --no-cache", f"{fresh.total:,}", f"{figures['no_cache_generations']:,}", "0", f"{fresh_s:.1f} s")
    table.add_row(f"  ×{REPEATS}: the {IMAGES * REPEATS:,} items without the cache", "", "", "", f"~{REPEATS * fresh_s:.0f} s")
    console.print(table)
    return figures


if __name__ == "__main__":
    main()
