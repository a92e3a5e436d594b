"""Million-item jobs: submit, status and export of 1,000,000 items, as a user runs them.

Measured in one run (`make bench`, or `python -m bench.million_bench`), on the embedded
default (SQLite + SQLite broker) and on PostgreSQL + Redis when they are reachable:
- `llava-labeler submit` of a 1M-line manifest: wall time of the command (start-up
  included) and its peak memory (targets: <= 20 s, <= 400 MB);
- `status` of that job, in-process (target < 0.5 s);
- the console's Jobs page with that job listed (`ui/views/jobs.py`: the newest jobs' statuses and
  each failing job's failures by reason), in-process (target < 1 s); one manifest line in every
  `REFUSED_EVERY` names a path outside the manifest's directory, so the job has failures to group;
- `llava-labeler export --format jsonl` of the 1M finished items (each given a prediction
  by one INSERT ... SELECT, as if a worker had labelled it): wall time and peak memory
  (targets: <= 30 s, <= 400 MB).
Peak memory is the command's own maximum resident set (`VmHWM`), not this process's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from bench.labeler_bench import POSTGRES, REDIS, _postgres_database, _reachable
from labeler.db import open_database
from labeler.service import Labeler
from entrypoints.settings import Settings

ITEMS = 1_000_000
REFUSED_EVERY = 1000  # this line of each thousand escapes the manifest's directory: its item fails at submit
JOBS_LISTED = 50  # as `ui.views.jobs.LISTED`


def _command(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Run `llava-labeler ARGS`; its wall seconds and peak resident MB.

    The peak is the command's own high-water mark (`VmHWM`, polled until it exits): the
    `wait4` figure would also count the pages the child shared with this process before exec."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "entrypoints", *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    peak_kb = 0
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError):
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if process.returncode:
        raise SystemExit(f"llava-labeler {' '.join(args)} failed with exit code {process.returncode}")
    return seconds, peak_kb / 1024


def _label_everything(database_url: str, job_id: int) -> None:
    """Give every item of the job a prediction in two statements (what a worker would have written)."""
    db = open_database(database_url)
    with db.write() as session:
        model = session.execute(text("SELECT model_version_id FROM jobs WHERE id = :j"), {"j": job_id}).scalar_one()
        session.execute(
            text(
                "INSERT INTO predictions (item_id, job_id, model_version_id, prompt_hash, text, confidence, tokens, "
                "finish_reason, latency_ms, reviewed, created_at) SELECT id, job_id, :m, 'bench', 'a red square', -0.1, 4, "
                "'stop', 1.0, :f, :now FROM items WHERE job_id = :j"
            ),
            {"m": model, "j": job_id, "f": False, "now": time.strftime("%Y-%m-%d %H:%M:%S")},
        )
        session.execute(text("UPDATE items SET status = 'done' WHERE job_id = :j"), {"j": job_id})
        session.execute(text("UPDATE jobs SET done = total, status = 'completed' WHERE id = :j"), {"j": job_id})
    if not db.is_sqlite:  # what autovacuum does while a real job writes its predictions over hours
        with db.write() as session:
            session.execute(text("ANALYZE predictions"))
            session.execute(text("ANALYZE items"))


def _jobs_page(labeler: Labeler) -> None:
    """What the console's Jobs page reads on each refresh."""
    for job in labeler.list_jobs(limit=JOBS_LISTED):
        if job.failed:
            labeler.failure_reasons(job.id)


def measure(work: Path, database_url: str, broker_url: str) -> dict[str, float]:
    env = {
        **os.environ,
        "LLAVA_LABELER_DATABASE_URL": database_url,
        "LLAVA_LABELER_BROKER_URL": broker_url,
        "LLAVA_LABELER_LABELER__METRICS_PORT": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    figures: dict[str, float] = {}
    figures["submit_s"], figures["submit_mb"] = _command(["submit", "many.jsonl", "--task", "caption"], env, work)
    settings = Settings(database_url=database_url, broker_url=broker_url)
    labeler = Labeler(settings)
    [job] = labeler.list_jobs(limit=1)
    assert (job.total, job.failed) == (ITEMS, ITEMS // REFUSED_EVERY), job
    started = time.perf_counter()
    labeler.status(job.id)
    figures["status_s"] = time.perf_counter() - started
    started = time.perf_counter()
    _jobs_page(labeler)
    figures["jobs_page_s"] = time.perf_counter() - started
    labeler.cancel(job.id)  # no worker of a later run should pick it up
    _label_everything(database_url, job.id)
    out = work / "export.jsonl"
    figures["export_s"], figures["export_mb"] = _command(["export", str(job.id), "--out", str(out)], env, work)
    with out.open("rb") as handle:
        assert sum(1 for _ in handle) == ITEMS
    out.unlink()
    return figures


def main() -> dict:
    console = Console()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        Image.new("RGB", (8, 8), (200, 30, 30)).save(work / "a.png")
        lines = (f'{{"image": "{"../out.png" if n % REFUSED_EVERY == 0 else "a.png"}", "metadata": {{"n": {n}}}}}\n' for n in range(ITEMS))
        (work / "many.jsonl").write_text("".join(lines))
        console.print(f"million-item bench: submit, status and export of {ITEMS:,} items…")
        embedded = work / "embedded"
        embedded.mkdir()
        (embedded / "many.jsonl").symlink_to(work / "many.jsonl")
        (embedded / "a.png").symlink_to(work / "a.png")
        results["SQLite, SQLite broker"] = measure(
            embedded, f"sqlite:///{embedded}/labeler.db", f"sqla+sqlite:///{embedded}/broker.db"
        )
        if _reachable(POSTGRES) and _reachable(REDIS):
            with _postgres_database() as url:
                results["PostgreSQL, Redis"] = measure(work, url, REDIS)
            import redis

            redis.Redis.from_url(REDIS).delete("labeler", "_kombu.binding.labeler")
    table = Table(title=f"million-item jobs on this machine (one run; {ITEMS:,} items)")
    table.add_column("measure")
    for stack in results:
        table.add_column(stack, justify="right")
    table.add_column("target", justify="right")
    rows = (
        ("submit (the command, start-up included), s", "submit_s", "{:.1f}", "<= 20"),
        ("submit, peak memory, MB", "submit_mb", "{:.0f}", "<= 400"),
        ("status, in-process, s", "status_s", "{:.3f}", "< 0.5"),
        ("console Jobs page, in-process, s", "jobs_page_s", "{:.3f}", "< 1"),
        ("export jsonl (the command), s", "export_s", "{:.1f}", "<= 30"),
        ("export, peak memory, MB", "export_mb", "{:.0f}", "<= 400"),
    )
    for label, key, fmt, target in rows:
        table.add_row(label, *(fmt.format(figures[key]) for figures in results.values()), target)
    console.print(table)
    return results


if __name__ == "__main__":
    main()
