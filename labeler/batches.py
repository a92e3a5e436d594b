"""One batch, exactly once: claim the items, read the images, generate, record, in that order.

Exactly-once rests on the database, not on the queue:
1. *Claim.* One UPDATE moves the batch's items from `pending` (or `running` with an
   expired lease) to `running` under a fresh lease token and bumps `attempts`; only
   rows it moved are this worker's. A message delivered twice claims nothing the
   second time; items of a worker that died are claimable again once its lease
   (`visibility_timeout_s`) expires, and `requeue_expired` sends them out again.
2. *Work* outside any transaction: read bytes, build requests, one `generate` call.
   While it runs, a heartbeat renews the lease every third of the timeout, so only a
   worker that stopped (not a slow one) loses its items.
3. *Record.* One transaction locks the items this token still owns, writes their final
   state, upserts predictions keyed by (item, model version, prompt hash), and moves
   the job's counters by exactly the rows it finished. Rows cancelled or re-claimed in
   the meantime are not ours any more and are left alone.

Each image is labelled once: before generating, one indexed query per batch finds earlier
predictions of the same image (content hash), prompt and model version that generating would
give again (within the batch's budget), from this job or any other, and those items copy them
(a prediction marked `cached`, counted in the job's `cache_hits`); of the items of a batch
that share an image and prompt only the first is generated, and only once this batch holds
the key's reservation (`labeler.reservations`): items whose key another batch in flight is
generating go back to the queue unsent (`deferred`, not an attempt) and copy its answer when
they come round again. A job submitted with `use_cache` off (`--no-cache`) generates every
item; a sampling job (temperature above 0) neither copies nor is copied. A JSON answer cut off by `max_new_tokens` is asked
again once, in the same batch, with the budget `engine.schema_budget.reask_budget` gives
(counted in the job's `reasks`) before it fails.

Per-item problems fail that item at once with the reason: anything raised while its image
is read or its request built, expected or not, is the item's alone. Only an engine-wide
problem is transient: `TransientEngineError` from `generate` releases the
items with a lease that expires after the backoff (`retry_backoff_s`, doubling per
attempt), so `requeue_expired` sends them again then, through the same path as a dead
worker's items, on any broker; after `max_retries` retries they fail. An item claimed
`max_attempts` times without finishing (a worker dying on it again and again) fails.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session

from engine.backend import Backend, GenerationOptions, GenerationRequest, GenerationResult, TransientEngineError
from engine.prompts import prompt_hash
from engine.schema_budget import reask_budget
from labeler import reservations
from labeler.settings import LabelerConfig
from labeler.db import Database, dialect_insert
from labeler.models import RUNNABLE_JOB_STATES, Item, ItemState, Job, JobState, Prediction, utcnow
from labeler.reading import ReadError, read_image_bytes
from labeler.registry import serving_uri, version_for_uri

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 60.0
ITEMS = Item.__table__


@dataclass
class BatchResult:
    """What one `process` call did (for the task, its metrics and tests)."""

    claimed: int = 0
    done: int = 0
    failed: int = 0
    released: int = 0
    skipped: str | None = None
    engine_seconds: float = 0.0


@dataclass
class _Work:
    id: int
    uri: str
    question: str | None
    attempts: int
    last_error: str | None
    request: GenerationRequest | None = None
    content_hash: str | None = None
    prompt_hash: str | None = None

    @property
    def key(self) -> tuple[str | None, str | None]:
        """What makes two items the same question: their image and their prompt."""
        return self.content_hash, self.prompt_hash


@dataclass
class _Outcome:
    """The final state to record for claimed items."""

    failures: dict[int, str] = field(default_factory=dict)
    results: dict[int, tuple[_Work, GenerationResult]] = field(default_factory=dict)
    released: dict[int, tuple[str, float]] = field(default_factory=dict)  # reason, backoff seconds
    cached: set[int] = field(default_factory=set)  # results copied from an earlier prediction
    deferred: set[int] = field(default_factory=set)  # another batch is generating their image and prompt
    reasked: set[int] = field(default_factory=set)  # items asked again after a cut-off answer
    engine_seconds: float = 0.0
    cache_entries: bool = True  # greedy answers: recorded with their image's hash, for later items to copy

    def add(self, work: _Work, result: GenerationResult, *, cached: bool = False) -> None:
        if result.error:
            self.failures[work.id] = result.error
            return
        self.results[work.id] = (work, result)
        if cached:
            self.cached.add(work.id)


def generation_request(job: Job, question: str | None, image: bytes) -> GenerationRequest:
    """The engine request for one item of `job` (the item's question overrides the job's)."""
    options = {key: value for key, value in job.generation.items() if key in GenerationOptions.model_fields}
    return GenerationRequest(
        image=image,
        task=job.task,  # type: ignore[arg-type]
        instruction=question or job.instruction,
        json_schema=job.schema,
        **options,
    )


def greedy(job: Job) -> bool:
    """Whether the job's answers are the model's one answer (no sampling): only those are cache entries."""
    return not job.generation.get("temperature")


def uses_cache(job: Job) -> bool:
    """Whether the job reuses earlier predictions (`labeler.jobs.JobSpec.use_cache`, stored with its options):
    never when it samples, since each item then asks for a draw of its own."""
    return bool(job.generation.get("use_cache", True)) and greedy(job)


def _cut_off(request: GenerationRequest, result: GenerationResult) -> bool:
    return request.json_schema is not None and result.finish_reason == "length" and result.error is not None


def _cut_off_budget(request: GenerationRequest, cap: int) -> int | None:
    """The budget a JSON `request` is asked again with when its answer is cut off, or None (it fails)."""
    return reask_budget(request.json_schema, request.max_new_tokens, cap)  # type: ignore[arg-type]


class BatchProcessor:
    """Processes batches for one worker process: one engine, one database, one model version."""

    def __init__(self, db: Database, settings: LabelerConfig, backend: Callable[[], Backend]):
        self.db = db
        self.settings = settings
        self._backend = backend
        self._model_version_id: int | None = None

    def model_version_id(self) -> int:
        if self._model_version_id is None:
            uri = serving_uri(self.settings.engine.model, self.settings.engine.url)
            self._model_version_id = self.db.retrying(lambda s: version_for_uri(s, uri).id)
        return self._model_version_id

    def process(self, job_id: int, item_ids: list[int]) -> BatchResult:
        with self.db.read() as session:
            job = session.get(Job, job_id)
        if job is None:
            return BatchResult(skipped=f"job {job_id} does not exist")
        if job.status not in RUNNABLE_JOB_STATES:
            return BatchResult(skipped=f"job {job_id} is {job.status}")
        model_version_id = self.model_version_id()
        token = uuid.uuid4().hex
        claimed = self.db.retrying(lambda s: self._claim(s, job_id, item_ids, token))
        if not claimed:
            return BatchResult(skipped="no item of the batch was claimable")
        with self._heartbeat(token):
            outcome = self._work(job, claimed, token)
        done, failed, released = self.db.retrying(lambda s: self._record(s, job_id, token, outcome, model_version_id))
        return BatchResult(
            claimed=len(claimed), done=done, failed=failed, released=released, engine_seconds=outcome.engine_seconds
        )

    @contextmanager
    def _heartbeat(self, token: str) -> Iterator[None]:
        """Renew this token's leases in the background until the block ends."""
        timeout = self.settings.labeler.visibility_timeout_s
        stop = threading.Event()

        def renew(session: Session) -> None:
            session.execute(
                update(Item)
                .where(Item.lease_owner == token, Item.status == ItemState.CLAIMED)
                .values(lease_expires_at=utcnow() + timedelta(seconds=timeout))
                .execution_options(synchronize_session=False)
            )
            reservations.renew(session, token, utcnow() + timedelta(seconds=timeout))

        def beat() -> None:
            while not stop.wait(timeout / 3):
                try:
                    self.db.retrying(renew)
                except Exception:  # the lease then runs out and the items go to another worker: safe
                    log.exception("could not renew the lease of batch %s", token)

        thread = threading.Thread(target=beat, name=f"lease-{token[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _claim(self, session: Session, job_id: int, item_ids: list[int], token: str) -> list[_Work]:
        now = utcnow()
        runnable_job = select(Job.id).where(Job.id == job_id, Job.status.in_(RUNNABLE_JOB_STATES)).scalar_subquery()
        claim = (
            update(Item)
            .where(
                Item.id.in_(item_ids),
                Item.job_id == runnable_job,
                or_(Item.status == ItemState.PENDING, and_(Item.status == ItemState.CLAIMED, Item.lease_expires_at < now)),
            )
            .values(
                status=ItemState.CLAIMED,
                lease_owner=token,
                lease_expires_at=now + timedelta(seconds=self.settings.labeler.visibility_timeout_s),
                attempts=Item.attempts + 1,
            )
            .returning(Item.id, Item.uri, Item.question, Item.attempts, Item.error)
            .execution_options(synchronize_session=False)
        )
        rows = session.execute(claim).all()
        if rows:  # the job is running from its first claim on (one statement, a write only the first time)
            session.execute(
                update(Job)
                .where(Job.id == job_id, or_(Job.status.in_((JobState.SUBMITTING, JobState.QUEUED)), Job.started_at.is_(None)))
                .values(
                    status=case((Job.status.in_((JobState.SUBMITTING, JobState.QUEUED)), JobState.RUNNING), else_=Job.status),
                    started_at=func.coalesce(Job.started_at, now),
                )
                .execution_options(synchronize_session=False)
            )
        return [_Work(*row) for row in sorted(rows)]

    def _work(self, job: Job, claimed: list[_Work], token: str) -> _Outcome:
        outcome = _Outcome(cache_entries=greedy(job))
        ready: list[_Work] = []
        for work in claimed:
            if work.attempts > self.settings.labeler.max_attempts:
                reason = work.last_error or "the worker processing it stopped (killed or crashed)"
                outcome.failures[work.id] = f"gave up after {work.attempts - 1} attempts: {reason}"
                continue
            failure = self._prepare(job, work)
            if failure is None:
                ready.append(work)
            else:
                outcome.failures[work.id] = failure
        reuse = uses_cache(job)
        known = self._earlier_predictions(ready) if reuse and ready else {}
        generating: list[_Work] = []
        waiting: list[_Work] = []  # the same image and prompt as an item generated in this batch
        first: dict[tuple[str | None, str | None], _Work] = {}
        for work in ready:
            if work.key in known:
                outcome.add(work, known[work.key], cached=True)
            elif reuse and work.key in first:
                waiting.append(work)
            else:
                first.setdefault(work.key, work)
                generating.append(work)
        if reuse and generating:
            generating, waiting = self._reserve(token, generating, waiting, outcome)
        if not generating:
            return outcome
        started = time.perf_counter()
        try:
            results = self._generate(generating, outcome)
        except TransientEngineError as exc:
            outcome.engine_seconds = time.perf_counter() - started
            limits = self.settings.labeler
            for work in [*generating, *waiting]:
                if work.attempts <= limits.max_retries:
                    backoff = min(MAX_BACKOFF_S, limits.retry_backoff_s * 2 ** (work.attempts - 1))
                    outcome.released[work.id] = (f"engine error, will retry: {exc}", backoff)
                else:
                    outcome.failures[work.id] = f"engine unavailable after {work.attempts} tries: {exc}"
            return outcome
        outcome.engine_seconds = time.perf_counter() - started
        generated = {work.id: result for work, result in zip(generating, results, strict=True)}
        for work in generating:
            outcome.add(work, generated[work.id])
        for work in waiting:
            outcome.add(work, generated[first[work.key].id], cached=True)
        return outcome

    def _reserve(
        self, token: str, generating: list[_Work], waiting: list[_Work], outcome: _Outcome
    ) -> tuple[list[_Work], list[_Work]]:
        """Reserve the keys the batch is about to generate (`labeler.reservations`); the items whose key
        another batch holds are deferred, with their duplicates in this batch. Returns what is left."""
        expires = utcnow() + timedelta(seconds=self.settings.labeler.visibility_timeout_s)
        keys = {work.key for work in generating}
        held = self.db.retrying(lambda s: reservations.reserve(s, keys, self.model_version_id(), token, expires, utcnow()))  # type: ignore[arg-type]
        outcome.deferred.update(work.id for work in [*generating, *waiting] if work.key not in held)
        return [w for w in generating if w.key in held], [w for w in waiting if w.key in held]

    def _earlier_predictions(self, works: list[_Work]) -> dict[tuple[str | None, str | None], GenerationResult]:
        """The answers this model already gave to the batch's images and prompts, by (content hash, prompt
        hash), from any job: one query on `ix_predictions_cache`. Only answers generating would give again
        are reused: one that ended on its own within this batch's budget, or one cut off at exactly it (a
        caption cut off at 6 tokens is not the answer to a budget of 16)."""
        budget = self._largest_budget(works[0].request)  # type: ignore[arg-type]  (the job's: one per batch)
        query = select(
            Prediction.content_hash,
            Prediction.prompt_hash,
            Prediction.text,
            Prediction.output_json,
            Prediction.confidence,
            Prediction.field_confidence,
            Prediction.tokens,
            Prediction.prompt_tokens,
        ).where(
            Prediction.content_hash.in_({work.content_hash for work in works}),
            Prediction.prompt_hash.in_({work.prompt_hash for work in works}),
            Prediction.model_version_id == self.model_version_id(),
            Prediction.tokens <= budget,
            or_(Prediction.finish_reason == "stop", Prediction.tokens == budget),
            Prediction.cached.is_(False),  # the originals: one row per generation, not one per copy
        )
        with self.db.read() as session:
            rows = session.execute(query).all()
        return {
            (content, prompt): GenerationResult(
                text=text, json=answer, confidence=confidence, field_confidence=fields, tokens=tokens, prompt_tokens=used or 0
            )
            for content, prompt, text, answer, confidence, fields, tokens, used in rows
        }

    def _largest_budget(self, request: GenerationRequest) -> int:
        """The most tokens an answer to `request` may take here: its budget, or a JSON answer's re-ask budget."""
        again = _cut_off_budget(request, self.settings.labeler.max_reask_tokens) if request.json_schema is not None else None
        return again or request.max_new_tokens

    def _generate(self, works: list[_Work], outcome: _Outcome) -> list[GenerationResult]:
        """Generate the batch, then once more, with a larger budget (`reask_budget`), the JSON answers
        cut off by theirs; an answer cut off again fails with both budgets named."""
        backend = self._backend()
        requests: list[GenerationRequest] = [work.request for work in works]  # type: ignore[misc]
        results = backend.generate(requests)
        cap = self.settings.labeler.max_reask_tokens
        again: dict[int, GenerationRequest] = {}
        for i, (request, result) in enumerate(zip(requests, results, strict=True)):
            budget = _cut_off_budget(request, cap) if _cut_off(request, result) else None
            if budget is not None:
                again[i] = request.model_copy(update={"max_new_tokens": budget})
        if not again:
            return results
        for i, result in zip(again, backend.generate(list(again.values())), strict=True):
            if result.error:
                result.error = f"{result.error} (asked again: first cut off at max_new_tokens={requests[i].max_new_tokens})"
            results[i] = result
            outcome.reasked.add(works[i].id)
        return results

    def _prepare(self, job: Job, work: _Work) -> str | None:
        """Read and hash the item's image and build its request; None, or the reason the item fails.

        Whatever goes wrong here is this item's alone. An unexpected exception fails it now
        with its own reason; were it to escape, the whole batch would sit out its lease and
        every item fail later as if the worker had died.
        """
        try:
            image = read_image_bytes(work.uri, self.settings)
            work.content_hash = hashlib.sha256(image).hexdigest()
            work.request = generation_request(job, work.question, image)
            work.prompt_hash = prompt_hash(work.request.prompt, work.request.json_schema)  # a vqa item without a question fails here, alone
        except (ReadError, ValueError) as exc:
            return str(exc)
        except Exception as exc:
            log.warning("item %s (%s) failed unexpectedly before generation", work.id, work.uri, exc_info=True)
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return None

    def _record(
        self, session: Session, job_id: int, token: str, outcome: _Outcome, model_version_id: int
    ) -> tuple[int, int, int]:
        """Write the outcome for the items this token still owns; returns (done, failed, released)."""
        ids = [*outcome.failures, *outcome.results, *outcome.released, *outcome.deferred]
        owned = set(
            session.scalars(
                select(Item.id)
                .where(Item.id.in_(ids), Item.lease_owner == token, Item.status == ItemState.CLAIMED)
                .order_by(Item.id)
                .with_for_update()
            )
        )
        now = utcnow()
        finished = {"lease_owner": None, "lease_expires_at": None, "finished_at": now}
        done_rows = [
            {"id": i, "status": ItemState.DONE, "error": None, "content_hash": work.content_hash, **finished}
            for i, (work, _) in outcome.results.items()
            if i in owned
        ]
        failed_rows = [
            {"id": i, "status": ItemState.FAILED, "error": reason, **finished} for i, reason in outcome.failures.items() if i in owned
        ]
        released_rows = [  # still `running`, owned by nobody, until the backoff lease runs out
            {"id": i, "error": reason, "lease_owner": None, "lease_expires_at": now + timedelta(seconds=backoff)}
            for i, (reason, backoff) in outcome.released.items()
            if i in owned
        ]
        for rows in (done_rows, failed_rows, released_rows):
            _update_rows(session, rows)
        if deferred := outcome.deferred & owned:  # back to the queue, unsent, the claim not counted as an attempt
            session.execute(
                update(Item)
                .where(Item.id.in_(deferred))
                .values(status=ItemState.PENDING, lease_owner=None, lease_expires_at=None, sent_at=None, attempts=Item.attempts - 1)
                .execution_options(synchronize_session=False)
            )
        reservations.release(session, token)
        per_item_ms = 1000 * outcome.engine_seconds / max(1, len(outcome.results) - len(outcome.cached))
        predictions = [(*outcome.results[row["id"]], row["id"] in outcome.cached) for row in done_rows]
        _upsert_predictions(session, job_id, model_version_id, predictions, per_item_ms, now, outcome.cache_entries)
        if done_rows or failed_rows:
            finished_ids = {row["id"] for row in (*done_rows, *failed_rows)}
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    done=Job.done + len(done_rows),
                    failed=Job.failed + len(failed_rows),
                    reasks=Job.reasks + len(outcome.reasked & finished_ids),
                    cache_hits=Job.cache_hits + len(outcome.cached & finished_ids),
                    progressed_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            finish_job_if_complete(session, job_id)
        return len(done_rows), len(failed_rows), len(released_rows)

def _upsert_predictions(
    session: Session,
    job_id: int,
    model_version_id: int,
    rows: list[tuple[_Work, GenerationResult, bool]],
    latency_ms: float,
    now: datetime,
    cache_entries: bool,
) -> None:
    """Insert, or on (item, model version, prompt hash) conflict overwrite: never a second row.
    Each row is (work, result, whether the result was copied from an earlier prediction); with
    `cache_entries` off (a sampled answer) no image hash is recorded, so no later item copies it."""
    if not rows:
        return
    values: list[dict[str, Any]] = []
    for work, result, cached in rows:
        values.append(
            {
                "item_id": work.id,
                "job_id": job_id,
                "model_version_id": model_version_id,
                "prompt_hash": work.prompt_hash,
                "content_hash": work.content_hash if cache_entries else None,
                "cached": cached,
                "text": result.text,
                "json": result.json,
                "confidence": result.confidence,
                "field_confidence": result.field_confidence,
                "tokens": result.tokens,
                "prompt_tokens": result.prompt_tokens or None,
                "finish_reason": result.finish_reason,
                "latency_ms": 0.0 if cached else latency_ms,
                "reviewed": False,
                "created_at": now,
            }
        )
    insert = dialect_insert(session)(Prediction.__table__)
    keep = (
        *("text", "json", "confidence", "field_confidence", "tokens", "prompt_tokens", "finish_reason"),
        *("latency_ms", "content_hash", "cached", "created_at"),
    )
    upsert = insert.on_conflict_do_update(
        index_elements=["item_id", "model_version_id", "prompt_hash"],
        set_={name: insert.excluded[name] for name in keep},
    )
    session.execute(upsert, values)


def _update_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Per-row UPDATEs by id in one executemany (every row sets the same columns)."""
    if not rows:
        return
    columns = [key for key in rows[0] if key != "id"]
    statement = update(ITEMS).where(ITEMS.c.id == bindparam("b_id")).values({c: bindparam(f"b_{c}") for c in columns})
    session.execute(statement, [{f"b_{key}": value for key, value in row.items()} for row in rows])


def finish_job_if_complete(session: Session, job_id: int) -> None:
    """Mark the job completed once every item is in a terminal state."""
    session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_((JobState.QUEUED, JobState.RUNNING, JobState.PAUSED)),
            Job.done + Job.failed + Job.cancelled >= Job.total,
        )
        .values(status=JobState.COMPLETED, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
