"""Job commands: submit, status, pause, resume, cancel, retry-failed, export, worker and run.

They are thin: each calls `labeler.service.Labeler` and prints. Errors a person must fix
(a missing source, an unknown job, a malformed manifest line) end in one line through
`fail`. Heavy imports happen inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from engine.backend import GenerationOptions
from entrypoints.cli.errors import fail
from entrypoints.cli.request_options import request_options

JobId = Annotated[int, typer.Argument(help="Job id (see `status`).")]
Source = Annotated[str, typer.Argument(help="Directory, glob, .jsonl manifest (path or URL), or s3:// gs:// http(s):// URL.")]
BatchSize = Annotated[Optional[int], typer.Option(min=1, help="Items per task (default: settings labeler.batch_size).")]
Name = Annotated[Optional[str], typer.Option(help="A name to find the job by.")]
Extensions = Annotated[Optional[list[str]], typer.Option("--ext", help="File extension to take from a directory (repeat).")]
UseCache = Annotated[
    bool,
    typer.Option("--cache/--no-cache", help="Reuse earlier predictions of the same image, prompt and model (--no-cache: generate every item)."),
]


def _labeler():
    from entrypoints.settings import get_settings
    from labeler.service import Labeler

    return Labeler(Labeler(get_settings()).settings_for_new_jobs())  # jobs run (and are attributed to) the active version


def _spec(ask: GenerationOptions, use_cache: bool):
    from labeler.jobs import JobSpec

    return JobSpec.model_validate({**ask.model_dump(exclude_unset=True), "use_cache": use_cache})  # unset: JobSpec's defaults


def _submit(labeler, source, spec, name, batch_size, extensions):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from labeler.jobs import JobError
    from labeler.sources import IMAGE_EXTENSIONS, SourceError

    exts = tuple(e if e.startswith(".") else f".{e}" for e in extensions) if extensions else IMAGE_EXTENSIONS
    columns = (SpinnerColumn(), TextColumn("submitting: {task.completed:,} items"), TimeElapsedColumn())
    console = _progress_console()
    try:
        with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("submit", total=None)
            return labeler.submit(
                source, spec, name=name, batch_size=batch_size, extensions=exts, progress=lambda n: bar.advance(task, n)
            )
    except (JobError, SourceError) as exc:
        fail(str(exc))


def _progress_console():
    """Progress goes to stderr: stdout carries results (`status --json` stays parseable)."""
    from rich.console import Console

    return Console(stderr=True)


def _describe(status) -> str:
    rate = f", {status.items_per_second:.1f} items/s" if status.items_per_second else ""
    eta = f", ETA {status.eta_seconds:.0f} s" if status.eta_seconds is not None else ""
    stalled = f", stalled: {status.stalled}" if status.stalled else ""  # then there is no ETA
    return (
        f"job {status.id} [{status.status}] {status.task} on {status.source}: {status.total:,} items - "
        f"{status.done:,} done, {status.failed:,} failed, {status.cancelled:,} cancelled, {status.pending:,} to do{rate}{eta}{stalled}"
    )


def _follow(labeler, job_id: int, poll_s: float = 0.5):
    """A progress bar until the job finishes (or stops making progress because it is paused)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from labeler.models import JobState

    status = labeler.status(job_id)
    columns = (
        TextColumn("job {task.fields[job]} {task.fields[state]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_progress_console()) as bar:
        task = bar.add_task("job", total=status.total, job=job_id, state=status.status, failed=0)
        while True:
            status = labeler.status(job_id)
            finished = status.done + status.failed + status.cancelled
            bar.update(task, completed=finished, total=status.total, state=status.status, failed=status.failed)
            if status.finished or status.status == JobState.PAUSED:
                return status
            time.sleep(poll_s)


def _print_failures(labeler, job_id: int) -> None:
    failures = labeler.failed_items(job_id, limit=10)
    for item in failures:
        typer.echo(f"  failed: {item.uri}: {item.error}")


@request_options
def submit(
    ask: GenerationOptions,
    source: Source,
    batch_size: BatchSize = None,
    name: Name = None,
    ext: Extensions = None,
    follow: Annotated[bool, typer.Option(help="Show a progress bar until the job finishes.")] = False,
    cache: UseCache = True,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="manifest (images, folders, .jsonl manifests) | openai-batch (an OpenAI Batch input file: its lines "
            "carry the requests, one job per request shape)"
        ),
    ] = "manifest",
) -> None:
    """Create a job from SOURCE and queue its items for the workers."""
    labeler = _labeler()
    if fmt == "openai-batch":
        return _submit_openai_batch(labeler, Path(source))
    if fmt != "manifest":
        fail(f"unknown --format {fmt!r}: manifest or openai-batch")
    spec = _spec(ask, cache)
    status = _submit(labeler, source, spec, name, batch_size, ext)
    typer.echo(f"submitted: {_describe(status)}")
    if follow:
        typer.echo(_describe(_follow(labeler, status.id)))


def _submit_openai_batch(labeler, path: Path) -> None:
    """An OpenAI Batch input file as jobs; lines that cannot become requests are listed, not fatal."""
    from labeler.openai_batch import BatchFileError, check_batch_file, submit_batch_lines

    limits = labeler.settings.api
    try:
        with path.open("rb") as lines:
            check_batch_file(lines, max_bytes=limits.max_request_bytes, max_requests=limits.max_requests)
        with path.open("rb") as lines:
            submitted = submit_batch_lines(labeler, lines)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    except BatchFileError as exc:
        fail(f"{path}: {exc}")
    jobs = ", ".join(map(str, submitted.job_ids)) or "none"
    typer.echo(f"batch {submitted.batch_id}: {submitted.total:,} requests; jobs {jobs}; {len(submitted.refused):,} refused")
    for refused in submitted.refused:
        typer.echo(f"  refused: line {refused.line} ({refused.custom_id}): {refused.message}")


def status(
    job_id: Annotated[Optional[int], typer.Argument(help="Job id (none: list recent jobs).")] = None,
    watch: Annotated[bool, typer.Option(help="Follow the job with a progress bar until it finishes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts, throughput and ETA of a job, or a table of recent jobs."""
    from rich.console import Console
    from rich.table import Table

    from labeler.jobs import JobError

    labeler = _labeler()
    if job_id is None:
        listed = labeler.list_jobs()
        if as_json:
            typer.echo(json.dumps([s.to_dict() for s in listed]))
            return
        table = Table("job", "status", "task", "total", "done", "failed", "cancelled", "items/s", "source")
        for s in listed:
            rate = f"{s.items_per_second:.1f}" if s.items_per_second else "-"
            table.add_row(str(s.id), s.status, s.task, f"{s.total:,}", f"{s.done:,}", f"{s.failed:,}", f"{s.cancelled:,}", rate, s.source)
        Console().print(table)
        return
    try:
        current = _follow(labeler, job_id) if watch else labeler.status(job_id)
    except JobError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(current.to_dict()))
        return
    typer.echo(_describe(current))
    _print_failures(labeler, job_id)


def _state_command(verb: str):
    def command(job_id: JobId) -> None:
        from labeler.jobs import JobError

        labeler = _labeler()
        try:
            status = getattr(labeler, verb)(job_id)
        except JobError as exc:
            fail(str(exc))
        typer.echo(_describe(status))

    command.__doc__ = {
        "pause": "Stop starting new batches of a job (running batches finish).",
        "resume": "Queue the pending items of a paused job again.",
        "cancel": "Cancel every unfinished item of a job.",
    }[verb]
    return command


def retry_failed(job_id: JobId) -> None:
    """Send a job's failed items through again."""
    from labeler.jobs import JobError

    labeler = _labeler()
    try:
        status, count = labeler.retry_failed(job_id)
    except JobError as exc:
        fail(str(exc))
    typer.echo(f"{count:,} failed items queued again; {_describe(status)}")


def export(
    job_id: JobId,
    fmt: Annotated[str, typer.Option("--format", help="jsonl | coco | llava | label-studio | openai-batch")] = "jsonl",
    out: Annotated[Optional[Path], typer.Option(help="Output file (default: build/data/exports/job-N.<format>).")] = None,
    include_unreviewed: Annotated[
        bool, typer.Option(help="llava: also unreviewed predictions (default: reviewed labels only).")
    ] = False,
    relative_to: Annotated[
        Optional[Path],
        typer.Option(
            "--relative-to",
            "--image-root",
            file_okay=False,
            help="coco, llava, label-studio: write image paths relative to DIR (an image outside it is an error).",
        ),
    ] = None,
    image_url_prefix: Annotated[
        Optional[str],
        typer.Option(help="label-studio: image URL = PREFIX + the path relative to --image-root, e.g. /data/local-files/?d="),
    ] = None,
) -> None:
    """Write a job's results as JSONL, COCO captions (+ a COCO results file), LLaVA conversations or Label Studio tasks
    (+ their labeling config)."""
    from labeler.exports import SUFFIX, ExportError, companion

    labeler = _labeler()
    if fmt == "openai-batch":
        return _export_openai_batch(labeler, job_id, out or _default_export(labeler, job_id, ".openai-batch.jsonl"))
    target = out or _default_export(labeler, job_id, SUFFIX.get(fmt, ""))
    try:
        count = labeler.export(
            job_id, fmt, target, include_unreviewed=include_unreviewed, relative_to=relative_to, image_url_prefix=image_url_prefix
        )
    except ExportError as exc:
        fail(str(exc))
    typer.echo(f"{count:,} records written to {target}")
    if (beside := companion(fmt, target)) is not None:
        typer.echo(f"and {beside}")


def _export_openai_batch(labeler, job_id: int, out: Path) -> None:
    """A job's results as an OpenAI Batch output file, and its failures as the error file beside it."""
    from labeler.jobs import JobError
    from labeler.openai_batch import write_batch_results

    try:
        labeler.status(job_id)
    except JobError as exc:
        fail(str(exc))
    errors = out.with_name(out.name.removesuffix(".jsonl") + ".errors.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as output, errors.open("wb") as error_file:
        counts = write_batch_results(labeler.db, [job_id], output, error_file)
    typer.echo(f"{counts.completed:,} responses written to {out}\n{counts.failed:,} errors written to {errors}")


def _default_export(labeler, job_id: int, suffix: str) -> Path:
    return Path(labeler.settings.data_dir) / "exports" / f"job-{job_id}{suffix}"


def worker(
    concurrency: Annotated[Optional[int], typer.Option(min=1, help="Processes (default: settings).")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run a worker: processes batches from the queue until stopped (SIGTERM: finish the batch, then stop)."""
    from entrypoints.settings import get_settings
    from labeler.db import open_database
    from labeler.worker import start_worker

    settings = get_settings()
    open_database(settings.database_url)  # migrate before any child starts
    start_worker(settings, concurrency=concurrency, loglevel=loglevel)


@request_options
def run(
    ask: GenerationOptions,
    source: Source,
    batch_size: BatchSize = None,
    name: Name = None,
    ext: Extensions = None,
    out: Annotated[Optional[Path], typer.Option(help="Directory for the exports (default: build/data/exports).")] = None,
    cache: UseCache = True,
) -> None:
    """Submit SOURCE and process it to the end in this process, then print accuracy and exports."""
    from engine.backend import EngineError
    from labeler.worker import InProcessWorker, load_engine

    labeler = _labeler()
    spec = _spec(ask, cache)
    try:
        engine = load_engine(labeler.settings)
    except EngineError as exc:
        fail(str(exc))
    with InProcessWorker(labeler.settings, engine):
        status = _submit(labeler, source, spec, name, batch_size, ext)
        status = _follow(labeler, status.id)
    typer.echo(_describe(status))
    _print_failures(labeler, status.id)
    score = labeler.accuracy(status.id)
    if score is not None:
        typer.echo(score.summary())
    from labeler.exports import SUFFIX

    folder = out or Path(labeler.settings.data_dir) / "exports"
    for fmt in ("jsonl", "coco", "label-studio"):
        target = folder / f"job-{status.id}{SUFFIX[fmt]}"
        count = labeler.export(status.id, fmt, target)
        typer.echo(f"export {fmt}: {target} ({count:,} records)")
    typer.echo(f"after review: llava-labeler export {status.id} --format llava (reviewed labels for training)")


def register(app: typer.Typer) -> None:
    """Mount the job commands on the root CLI."""
    app.command()(submit)
    app.command()(status)
    for verb in ("pause", "resume", "cancel"):
        app.command(verb)(_state_command(verb))
    app.command("retry-failed")(retry_failed)
    app.command()(export)
    app.command()(worker)
    app.command()(run)
