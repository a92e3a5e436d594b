"""Job lifecycle: submit, pause, resume, cancel, retry failed items, recover expired leases and lost messages.

Every function takes an open `Database` (and a Celery app where it enqueues) and returns
plain values, so the CLI and the review console share them through `labeler.service`.
State changes and counter moves happen in one transaction; enqueueing happens after
the commit, and sending an item twice is harmless (workers claim items in the database).
The broker holds a window of a job's items, not all of them: submit sends the first
`queue_window` messages' worth, and each worker's sweeper tops the queue up from the
never-sent items (`sent_at` null) once half are taken (`top_up`). Every statement that
sends items also stamps their `sent_at`, so the sweeper can tell
an item whose message the broker lost (pending, not sent for `stale_after_s`, and no
message waiting in the queue) and send it again (`resend_stale`). A job with items
pending that no live worker serves, or that has not progressed for `stale_after_s`, is
reported stalled with the reason instead of an ETA.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain
from typing import Any

from celery import Celery
from pydantic import Field, model_validator
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import Select, delete, exists, func, select, text, update
from sqlalchemy.orm import Session

from engine.backend import MAX_NEW_TOKENS_LIMIT, GenerationOptions
from engine.schema_budget import json_token_bound
from labeler.settings import LabelerConfig, LabelerSettings
from labeler.batches import finish_job_if_complete
from labeler.bulk_insert import insert_columns
from labeler.db import Database
from labeler.models import (
    ACTIVE_JOB_STATES,
    FINISHED_JOB_STATES,
    RUNNABLE_JOB_STATES,
    Item,
    ItemState,
    Job,
    JobState,
    ModelVersion,
    WorkerBeat,
    utcnow,
)
from labeler.queue import batched, enqueue, waiting_messages
from labeler.registry import serving_uri, version_for_uri
from labeler.sources import IMAGE_EXTENSIONS, SourceError, iter_source

INSERT_CHUNK = 5000
ID_PAGE = 10_000
# A bulk load this large outruns PostgreSQL's statistics until autovacuum catches up; stale, they
# turn each keyset page (exports, the console) into a scan of the whole job. ANALYZE samples.
ANALYZE_AFTER = 50_000
MISSED_BEATS = 3  # a worker whose heartbeat is older than this many beats counts as gone


class JobError(ValueError):
    """A job request that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class JobStatus:
    """A job's state and progress, as `status` prints it and the console shows it."""

    id: int
    name: str | None
    source: str
    task: str
    status: str
    model_version: str | None
    total: int
    done: int
    failed: int
    cancelled: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    items_per_second: float | None
    eta_seconds: float | None
    stalled: str | None = None  # why a job with items pending is not moving (then there is no ETA)
    reasks: int = 0  # JSON answers cut off by their budget and asked again (labeler.batches)
    cache_hits: int = 0  # items given an earlier prediction of the same image, prompt and model version

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed - self.cancelled

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_JOB_STATES

    def to_dict(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in self.__dataclass_fields__}
        out["pending"] = self.pending
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in out.items()}


class JobSpec(GenerationOptions):
    """What to ask of every item: the engine's options, stored with the job (task, instruction and
    schema in their own columns, the rest as `generation`), and whether earlier predictions are reused.
    A JSON job not given `max_new_tokens` gets its schema's token bound when the schema has one
    (`engine.schema_budget`): never cut off, never a guess."""

    use_cache: bool = Field(
        default=True, description="Reuse an earlier prediction of the same image, prompt and model version (off: generate each item)."
    )

    @model_validator(mode="before")
    @classmethod
    def _budget_from_schema(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "max_new_tokens" in data or data.get("task") != "json":
            return data
        schema = data.get("json_schema", data.get("schema"))
        bound = json_token_bound(schema) if isinstance(schema, dict) else None
        return data if bound is None else {**data, "max_new_tokens": min(bound, MAX_NEW_TOKENS_LIMIT)}

    def check(self) -> None:
        """Refuse a spec that no item could run with, before anything is written."""
        from engine.structured import SchemaError, check_schema

        if self.task == "json":
            if self.json_schema is None:
                raise JobError("a json task needs a JSON schema (--schema)")
            try:
                check_schema(self.json_schema)
            except SchemaError as exc:
                raise JobError(str(exc)) from None
        if self.task == "vqa" and not self.instruction:
            return  # every item must then carry its own question (manifest "question")
        try:
            _ = self.prompt
        except ValueError as exc:
            raise JobError(str(exc)) from None

    def generation(self) -> dict[str, Any]:
        """The options without their own columns, as stored in `jobs.generation`."""
        return self.model_dump(mode="json", exclude={"task", "instruction", "json_schema"})


@dataclass(frozen=True)
class Watch:
    """What telling a stalled job from a slow one takes: the live workers on the queue, the patience."""

    live_workers: int
    gone_after_s: float  # a worker not heard of for this long is gone
    stale_after_s: float


def watch(session: Session, settings: LabelerSettings, now: datetime) -> Watch:
    """Count the workers on `settings.queue` whose heartbeat is recent (one query for any number of jobs)."""
    gone_after_s = MISSED_BEATS * settings.heartbeat_s
    seen_since = now - timedelta(seconds=gone_after_s)
    live = session.scalar(
        select(func.count()).select_from(WorkerBeat).where(WorkerBeat.queue == settings.queue, WorkerBeat.last_seen > seen_since)
    )
    return Watch(live_workers=live or 0, gone_after_s=gone_after_s, stale_after_s=settings.stale_after_s)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} minutes" if seconds >= 120 else f"{seconds:.0f} s"


def stall_reason(job: Job, remaining: int, now: datetime, seen: Watch | None) -> str | None:
    """Why an active job with items to do is not moving, or None: a person should see this, not an ETA.

    Progress is proof of life too (a worker of an older version beats no heartbeat), so "no live
    worker" needs both silence from the workers and no item finished for as long."""
    if seen is None or remaining <= 0 or job.status not in ACTIVE_JOB_STATES:
        return None
    idle = (now - (job.progressed_at or job.started_at or job.created_at)).total_seconds()
    if not seen.live_workers and idle >= seen.gone_after_s:
        return "no live worker"
    if idle >= seen.stale_after_s:
        return f"no progress for {_duration(idle)} with items pending"
    return None


def job_status(job: Job, model_version: str | None, now: datetime | None = None, seen: Watch | None = None) -> JobStatus:
    """A job's progress; with `seen` (the workers' liveness), also whether it is stalled, then without an ETA."""
    now = now or utcnow()
    rate = eta = None
    processed = job.done + job.failed
    if job.started_at and processed:
        elapsed = ((job.finished_at or now) - job.started_at).total_seconds()
        rate = processed / elapsed if elapsed > 0 else None
    remaining = job.total - job.done - job.failed - job.cancelled
    stalled = stall_reason(job, remaining, now, seen)
    if rate and job.status in ACTIVE_JOB_STATES and not stalled:
        eta = remaining / rate
    return JobStatus(
        id=job.id,
        name=job.name,
        source=job.source,
        task=job.task,
        status=job.status,
        model_version=model_version,
        total=job.total,
        done=job.done,
        failed=job.failed,
        cancelled=job.cancelled,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        items_per_second=rate,
        eta_seconds=eta,
        stalled=stalled,
        reasks=job.reasks,
        cache_hits=job.cache_hits,
    )


def _jobs_with_model_names():
    return select(Job, ModelVersion.name).outerjoin(ModelVersion, Job.model_version_id == ModelVersion.id)


def _statuses(db: Database, query: Select, settings: LabelerSettings | None) -> list[JobStatus]:
    """The jobs `query` selects; with `settings`, each also says whether it is stalled."""
    now = utcnow()
    with db.read() as session:
        rows = session.execute(query).all()
        seen = watch(session, settings, now) if settings and rows else None
    return [job_status(job, model_version, now, seen) for job, model_version in rows]


def get_status(db: Database, job_id: int, settings: LabelerSettings | None = None) -> JobStatus:
    listed = _statuses(db, _jobs_with_model_names().where(Job.id == job_id), settings)
    if not listed:
        raise JobError(f"no job {job_id}")
    return listed[0]


def list_jobs(db: Database, *, limit: int = 50, offset: int = 0, settings: LabelerSettings | None = None) -> list[JobStatus]:
    return _statuses(db, _jobs_with_model_names().order_by(Job.id.desc()).limit(limit).offset(offset), settings)


def submit(
    db: Database,
    app: Celery,
    settings: LabelerConfig,
    source: str,
    spec: JobSpec,
    *,
    name: str | None = None,
    batch_size: int | None = None,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    progress: Callable[[int], None] | None = None,
) -> JobStatus:
    """Insert the job and its items (streamed, in chunks), then enqueue one task per batch."""
    spec.check()
    batch = batch_size or settings.labeler.batch_size
    items = iter_source(source, settings.fetch, extensions=extensions, max_manifest_bytes=settings.labeler.max_manifest_bytes)
    first = next(items, None)  # an unreadable source fails here, before a job exists
    if first is None:
        raise SourceError(f"no images found in {source} (extensions: {', '.join(extensions)})")
    uri = serving_uri(settings.engine.model, settings.engine.url)
    with db.write() as session:
        job = Job(
            name=name,
            source=source,
            task=spec.task,
            instruction=spec.instruction,
            schema=spec.json_schema,
            generation=spec.generation(),
            model_version_id=version_for_uri(session, uri).id,
            batch_size=batch,
            queue=settings.labeler.queue,
            status=JobState.SUBMITTING,
        )
        session.add(job)
        session.flush()
        job_id = job.id
    try:
        _insert_items(db, job_id, chain([first], items), progress)
    except BaseException:  # a bad manifest line (or Ctrl-C) part-way: leave no half-submitted job behind
        _discard(db, job_id)
        raise
    try:
        top_up(db, app, settings, waiting_messages(app, settings.labeler.queue))
    except KombuOperationalError as exc:  # the items are safe in the database: say how to send them later
        raise JobError(
            f"job {job_id} is saved with its items but could not be queued: the broker is unreachable ({exc}); "
            f"once it is back, `llava-labeler resume {job_id}` queues them"
        ) from None
    with db.write() as session:
        session.execute(update(Job).where(Job.id == job_id, Job.status == JobState.SUBMITTING).values(status=JobState.QUEUED))
        finish_job_if_complete(session, job_id)
    return get_status(db, job_id, settings.labeler)


def _insert_items(db: Database, job_id: int, items: Iterator, progress: Callable[[int], None] | None) -> None:
    """Bulk-insert the items. On PostgreSQL one COPY streams them all in one transaction with the job's
    counters (the server ingests a chunk while the next is read); elsewhere each chunk and its counters
    are one transaction (SQLite has one writer: workers record between chunks). Either way a crash
    leaves a consistent job."""
    counted = {"total": 0, "failed": 0}

    def chunks() -> Iterator[dict[str, list]]:
        for chunk in batched(items, INSERT_CHUNK):
            now, errors = utcnow(), [item.error for item in chunk]
            counted["total"] += len(chunk)
            counted["failed"] += sum(1 for error in errors if error)
            yield {
                "job_id": [job_id] * len(chunk),
                "uri": [item.uri for item in chunk],
                "question": [item.question for item in chunk],
                "metadata": [item.metadata or None for item in chunk],
                "reference": [item.reference for item in chunk],
                "status": [ItemState.FAILED if error else ItemState.PENDING for error in errors],
                "attempts": [0] * len(chunk),
                "error": errors,
                "finished_at": [now if error else None for error in errors],
                "sent_at": [None] * len(chunk),  # never sent: submit sends the queue's window, the sweepers the rest
            }
            if progress:
                progress(len(chunk))

    def count(session: Session) -> None:
        session.execute(update(Job).where(Job.id == job_id).values(total=Job.total + counted["total"], failed=Job.failed + counted["failed"]))
        counted.update(total=0, failed=0)

    if db.is_sqlite:
        for columns in chunks():
            with db.write() as session:
                insert_columns(session, Item.__table__, [columns])
                count(session)
        return
    with db.write() as session:
        insert_columns(session, Item.__table__, chunks())
        inserted = counted["total"]
        count(session)
    if inserted >= ANALYZE_AFTER:
        with db.write() as session:
            session.execute(text("ANALYZE items"))


def _discard(db: Database, job_id: int) -> None:
    with db.write() as session:
        session.execute(delete(Item).where(Item.job_id == job_id))
        session.execute(delete(Job).where(Job.id == job_id))


def pending_item_ids(db: Database, job_id: int) -> Iterator[int]:
    """A job's pending item ids in id order, read page by page (keyset), never all at once."""
    last = 0
    while True:
        with db.read() as session:
            page = list(
                session.scalars(
                    select(Item.id)
                    .where(Item.job_id == job_id, Item.status == ItemState.PENDING, Item.id > last)
                    .order_by(Item.id)
                    .limit(ID_PAGE)
                )
            )
        if not page:
            return
        yield from page
        last = page[-1]


def _mark_sent(job_id: int, after: int, now: datetime, which, limit: int):
    """One statement that picks the next page of the job's pending ids matching `which` (a condition
    on `sent_at`) and stamps them sent, returning them: a million items take 100 statements. The
    condition is checked again on each row, so two sweepers topping up at once send a page once."""
    page = select(Item.id).where(Item.job_id == job_id, Item.status == ItemState.PENDING, Item.id > after, which)
    return (
        update(Item)
        .where(Item.id.in_(page.order_by(Item.id).limit(limit)), which)
        .values(sent_at=now)
        .returning(Item.id)
        .execution_options(synchronize_session=False)
    )


def send_pending(
    db: Database,
    app: Celery,
    job_id: int,
    batch_size: int,
    queue: str,
    *,
    stale_before: datetime | None = None,
    limit: int | None = None,
) -> int:
    """Send the job's never-sent pending items (with `stale_before`, those last sent before it),
    at most `limit`, page by page; returns how many. A page is stamped before it is published, so
    a publish that fails part-way leaves items the sweeper sends again once they are stale."""
    which = Item.sent_at.is_(None) if stale_before is None else Item.sent_at < stale_before
    sent = after = 0
    while limit is None or sent < limit:
        page = ID_PAGE if limit is None else min(ID_PAGE, limit - sent)
        with db.write() as session:
            ids = sorted(session.scalars(_mark_sent(job_id, after, utcnow(), which, page)))
        if not ids:
            break
        enqueue(app, job_id, ids, batch_size, queue)
        sent, after = sent + len(ids), ids[-1]
    return sent


def top_up(db: Database, app: Celery, settings: LabelerConfig, waiting: int, queue: str | None = None) -> int:
    """Fill the queue back to `queue_window` messages once fewer than half wait (`waiting`), from the
    never-sent items of runnable jobs, oldest job first; returns how many items were sent.

    The database is where a job's items wait; the broker holds only a window of them, so a
    submit of a million items publishes a thousand messages, not thirty thousand."""
    window, queue = settings.labeler.queue_window, queue or settings.labeler.queue
    if waiting >= window // 2:
        return 0
    unsent = exists().where(Item.job_id == Job.id, Item.status == ItemState.PENDING, Item.sent_at.is_(None))
    with db.read() as session:
        runnable = session.execute(
            select(Job.id, Job.batch_size).where(Job.status.in_(RUNNABLE_JOB_STATES), Job.queue == queue, unsent).order_by(Job.id)
        ).all()
    budget, sent = window - waiting, 0
    for job_id, batch_size in runnable:
        count = send_pending(db, app, job_id, batch_size, queue, limit=budget * batch_size)
        sent, budget = sent + count, budget - math.ceil(count / batch_size)  # messages published
        if budget <= 0:
            break
    return sent


def _change_state(db: Database, job_id: int, allowed: tuple[str, ...], new: str, verb: str) -> Job:
    with db.write() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobError(f"no job {job_id}")
        if job.status not in allowed:
            raise JobError(f"cannot {verb} job {job_id}: it is {job.status}")
        job.status = new
        return job


def pause(db: Database, job_id: int) -> JobStatus:
    """Stop starting batches of the job (batches already running finish)."""
    _change_state(db, job_id, RUNNABLE_JOB_STATES, JobState.PAUSED, "pause")
    return get_status(db, job_id)


def resume(db: Database, app: Celery, settings: LabelerConfig, job_id: int) -> JobStatus:
    """Run a paused job again: every pending item counts as never sent and the queue is topped up
    (also repairs a job whose messages were lost; a duplicate message claims nothing)."""
    job = _change_state(db, job_id, (JobState.PAUSED, *RUNNABLE_JOB_STATES), JobState.QUEUED, "resume")
    with db.write() as session:
        session.execute(
            update(Item)
            .where(Item.job_id == job_id, Item.status == ItemState.PENDING)
            .values(sent_at=None)
            .execution_options(synchronize_session=False)
        )
    top_up(db, app, settings, waiting_messages(app, job.queue), queue=job.queue)
    with db.write() as session:
        finish_job_if_complete(session, job_id)
    return get_status(db, job_id, settings.labeler)


def cancel(db: Database, job_id: int) -> JobStatus:
    """Cancel every item not yet finished; results of batches in flight are discarded."""
    with db.write() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobError(f"no job {job_id}")
        if job.status in FINISHED_JOB_STATES:
            raise JobError(f"cannot cancel job {job_id}: it is {job.status}")
        result = session.execute(
            update(Item)
            .where(Item.job_id == job_id, Item.status.in_((ItemState.PENDING, ItemState.CLAIMED)))
            .values(status=ItemState.CANCELLED, lease_owner=None, lease_expires_at=None, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        job.cancelled += result.rowcount
        job.status = JobState.CANCELLED
        job.finished_at = utcnow()
    return get_status(db, job_id)


def retry_failed(db: Database, app: Celery, settings: LabelerConfig, job_id: int) -> tuple[JobStatus, int]:
    """Send the job's failed items through again; returns the status and how many were reset."""
    with db.write() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobError(f"no job {job_id}")
        if job.status == JobState.CANCELLED:
            raise JobError(f"cannot retry job {job_id}: it is cancelled")
        ids = list(
            session.scalars(
                update(Item)
                .where(Item.job_id == job_id, Item.status == ItemState.FAILED)
                .values(status=ItemState.PENDING, attempts=0, error=None, finished_at=None, sent_at=utcnow())
                .returning(Item.id)
                .execution_options(synchronize_session=False)
            )
        )
        job.failed -= len(ids)
        if ids and job.status == JobState.COMPLETED:
            job.status, job.finished_at = JobState.QUEUED, None
        paused = job.status == JobState.PAUSED
        batch_size, queue = job.batch_size, job.queue
    if ids and not paused:
        enqueue(app, job_id, sorted(ids), batch_size, queue)
    return get_status(db, job_id, settings.labeler), len(ids)


def requeue_expired(db: Database, app: Celery, settings: LabelerConfig) -> int:
    """Hand items whose worker lease ran out (a killed worker) back to the queue; returns how many."""
    now = utcnow()
    with db.write() as session:
        rows = session.execute(
            update(Item)
            .where(Item.status == ItemState.CLAIMED, Item.lease_expires_at < now)
            .values(status=ItemState.PENDING, lease_owner=None, lease_expires_at=None, sent_at=now)
            .returning(Item.job_id, Item.id)
            .execution_options(synchronize_session=False)
        ).all()
        if not rows:
            return 0
        runnable = select(Job).where(Job.id.in_({job_id for job_id, _ in rows}), Job.status.in_(RUNNABLE_JOB_STATES))
        jobs = {job.id: (job.batch_size, job.queue) for job in session.scalars(runnable)}
    by_job: dict[int, list[int]] = {}
    for job_id, item_id in rows:
        by_job.setdefault(job_id, []).append(item_id)
    for job_id, ids in by_job.items():
        if job_id in jobs:
            enqueue(app, job_id, sorted(ids), *jobs[job_id])
    return len(rows)


def resend_stale(db: Database, app: Celery, settings: LabelerConfig, waiting: int) -> int:
    """Send again the pending items of runnable jobs not sent for `stale_after_s` while no message
    waits in the queue (`waiting`, from `waiting_messages`): the broker lost theirs (flushed,
    restarted without persistence, purged). Items merely waiting their turn behind a long queue
    are left alone. Returns how many were sent."""
    if waiting:
        return 0
    queue = settings.labeler.queue  # `waiting` counts this queue: only its jobs can be judged
    stale_before = utcnow() - timedelta(seconds=settings.labeler.stale_after_s)
    stale_item = exists().where(Item.job_id == Job.id, Item.status == ItemState.PENDING, Item.sent_at < stale_before)
    with db.read() as session:
        stale_jobs = session.execute(
            select(Job.id, Job.batch_size).where(Job.status.in_(RUNNABLE_JOB_STATES), Job.queue == queue, stale_item)
        ).all()
    return sum(send_pending(db, app, job_id, batch, queue, stale_before=stale_before) for job_id, batch in stale_jobs)


@dataclass(frozen=True)
class FailedItem:
    id: int
    uri: str
    error: str | None


def failed_items(db: Database, job_id: int, *, limit: int = 20) -> list[FailedItem]:
    with db.read() as session:
        rows = session.execute(
            select(Item.id, Item.uri, Item.error)
            .where(Item.job_id == job_id, Item.status == ItemState.FAILED)
            .order_by(Item.id)
            .limit(limit)
        ).all()
    return [FailedItem(*row) for row in rows]

