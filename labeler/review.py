"""The review queue: hand out predictions lowest confidence first, one reviewer per item, record decisions.

`next_for_review` leases a prediction to a reviewer with one conditional UPDATE (it
only succeeds while nobody else holds a live lease), with the console's filters and
order (`PredictionFilter`; lowest confidence first, weakest JSON field first, lowest
calibrated probability of being right first, or random), so two reviewers asking at the
same moment never get the same item, and a lease left behind by a closed browser tab
expires after `review_lease_s`. A reviewer who asks again gets the item they already
hold. `record_review` is an upsert keyed by the prediction: submitting the same
decision twice (a double click, a retried request) leaves one review row.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import jsonschema
from sqlalchemy import Select, case, func, or_, select, update
from sqlalchemy.orm import Session

from engine.structured import validator
from labeler.calibration import TRUST_SCORE, calibration_for_job
from labeler.db import Database, dialect_insert
from labeler.models import Decision, Item, Job, Prediction, Review, utcnow

CANDIDATES = 20
WEAKEST_FIELD = Prediction.field_confidence["weakest_logprob"].as_float()  # engine.field_confidence; None for text


class ReviewError(ValueError):
    """A review that cannot be recorded (unknown prediction, bad decision, invalid edit, lease held)."""


@dataclass(frozen=True)
class ReviewTask:
    """Everything the console shows for one item under review."""

    prediction_id: int
    item_id: int
    job_id: int
    uri: str
    task: str
    question: str | None
    schema: dict[str, Any] | None
    text: str
    output_json: Any
    confidence: float | None
    field_confidence: dict[str, Any] | None
    lease_expires_at: datetime


@dataclass(frozen=True)
class ReviewRecord:
    id: int
    prediction_id: int
    decision: str
    output: Any
    reviewer: str
    created_at: datetime


ReviewState = Literal["unreviewed", "accept", "edit", "reject", "auto"]
REVIEW_STATES: tuple[ReviewState, ...] = ("unreviewed", *Decision)  # type: ignore[assignment]
HUMAN_DECISIONS = (Decision.ACCEPT, Decision.EDIT, Decision.REJECT)  # `auto` is labeler.auto_accept's alone
Order = Literal["confidence", "weakest_field", "calibrated", "random"]


@dataclass(frozen=True)
class PredictionFilter:
    """Which predictions a queue or page looks at; None means no restriction."""

    job_id: int | None = None
    model_version_id: int | None = None
    review_state: ReviewState | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None

    def apply(self, query: Select) -> Select:
        """Restrict a query that joins Prediction (and outer-joins Review for decided states)."""
        if self.job_id is not None:
            query = query.where(Prediction.job_id == self.job_id)
        if self.model_version_id is not None:
            query = query.where(Prediction.model_version_id == self.model_version_id)
        if self.min_confidence is not None:
            query = query.where(Prediction.confidence >= self.min_confidence)
        if self.max_confidence is not None:
            query = query.where(Prediction.confidence <= self.max_confidence)
        if self.review_state == "unreviewed":
            query = query.where(Prediction.reviewed.is_(False))
        elif self.review_state is not None:
            query = query.where(Prediction.reviewed.is_(True), Review.decision == self.review_state)
        return query


UNREVIEWED = PredictionFilter(review_state="unreviewed")


def _lease_free(reviewer: str, now: datetime):
    return or_(
        Prediction.review_lease_owner.is_(None),
        Prediction.review_lease_expires_at < now,
        Prediction.review_lease_owner == reviewer,
    )


def next_for_review(
    db: Database,
    reviewer: str,
    lease_s: float,
    wanted: PredictionFilter = UNREVIEWED,
    *,
    order: Order = "confidence",
    exclude: Collection[int] = (),
) -> ReviewTask | None:
    """Lease the next prediction matching `wanted`, lowest confidence first (or random), the reviewer's held one first.

    `exclude` holds predictions this reviewer skipped in this session, so a skip moves on
    instead of handing the same least-confident item straight back.
    """
    now = utcnow()
    with db.read() as session:
        query = wanted.apply(
            select(Prediction.id).outerjoin(Review, Review.prediction_id == Prediction.id).where(_lease_free(reviewer, now))
        )
        if exclude:
            query = query.where(Prediction.id.not_in(list(exclude)))
        held_first = case((Prediction.review_lease_owner == reviewer, 0), else_=1)
        if order == "calibrated":
            candidates = _least_probable(db, session, query, held_first)
        else:
            candidates = list(session.scalars(query.order_by(held_first, *_ranking(order), Prediction.id).limit(CANDIDATES)))
    expires = now + timedelta(seconds=lease_s)
    for prediction_id in candidates:
        with db.write() as session:
            condition = [Prediction.id == prediction_id, _lease_free(reviewer, utcnow())]
            if wanted.review_state == "unreviewed":
                condition.append(Prediction.reviewed.is_(False))  # someone may have decided it meanwhile
            taken = session.execute(
                update(Prediction)
                .where(*condition)
                .values(review_lease_owner=reviewer, review_lease_expires_at=expires)
                .execution_options(synchronize_session=False)
            ).rowcount
            if taken:
                return _task(session, prediction_id)
    return None


def _ranking(order: Order) -> tuple:
    if order == "random":
        return (func.random(),)
    if order == "weakest_field":
        return (WEAKEST_FIELD.asc().nulls_last(), Prediction.confidence.asc().nulls_first())
    return (Prediction.confidence.asc().nulls_first(),)


def _least_probable(db: Database, session: Session, query: Select, held_first) -> list[int]:
    """Candidates lowest calibrated P(right) first, each job through its own calibration.

    Calibration is monotone in the trust score, so each job's least probable items are among
    its lowest-scored ones: the CANDIDATES lowest of every job are ranked together. Items of a
    job with too few reviews to calibrate come first (nothing is known about them).
    """
    rank = func.row_number().over(partition_by=Prediction.job_id, order_by=(held_first, TRUST_SCORE.asc().nulls_first(), Prediction.id))
    lowest = query.add_columns(held_first.label("held"), Prediction.job_id, TRUST_SCORE.label("score"), rank.label("rank")).subquery()
    per_job: dict[int, list] = {}
    for row in session.execute(select(lowest).where(lowest.c.rank <= CANDIDATES)):
        per_job.setdefault(row.job_id, []).append(row)
    ranked = []
    for job_id, rows in per_job.items():
        fitted = calibration_for_job(db, job_id)
        scored = [row for row in rows if row.score is not None]
        known = dict(zip((row.id for row in scored), fitted.probability([row.score for row in scored]) if fitted and scored else []))
        ranked += [(row.held, row.id in known, known.get(row.id, 0.0), row.id) for row in rows]
    return [key[3] for key in sorted(ranked)[:CANDIDATES]]


def _task(session: Session, prediction_id: int) -> ReviewTask:
    prediction, item, job = session.execute(
        select(Prediction, Item, Job)
        .join(Item, Prediction.item_id == Item.id)
        .join(Job, Prediction.job_id == Job.id)
        .where(Prediction.id == prediction_id)
    ).one()
    return ReviewTask(
        prediction_id=prediction.id,
        item_id=item.id,
        job_id=job.id,
        uri=item.uri,
        task=job.task,
        question=item.question or job.instruction,
        schema=job.schema,
        text=prediction.text,
        output_json=prediction.output_json,
        confidence=prediction.confidence,
        field_confidence=prediction.field_confidence,
        lease_expires_at=prediction.review_lease_expires_at,  # type: ignore[arg-type]
    )


def release(db: Database, prediction_id: int, reviewer: str) -> None:
    """Give an item back unreviewed (the reviewer skipped it)."""
    with db.write() as session:
        session.execute(
            update(Prediction)
            .where(Prediction.id == prediction_id, Prediction.review_lease_owner == reviewer)
            .values(review_lease_owner=None, review_lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )


def _checked_output(decision: str, output: Any, schema: dict[str, Any] | None) -> Any:
    if decision not in HUMAN_DECISIONS:
        raise ReviewError(f"unknown decision {decision!r}; expected one of {', '.join(HUMAN_DECISIONS)}")
    if decision != Decision.EDIT:
        return None
    if output is None or output == "":
        raise ReviewError("an edit needs the corrected output")
    if schema is not None:
        try:
            validator(schema).validate(output)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
            raise ReviewError(f"the corrected output does not fit the job's schema at {where}: {exc.message}") from None
    elif not isinstance(output, str):
        raise ReviewError("the corrected output of a text task must be a string")
    return output


def record_review(
    db: Database, prediction_id: int, reviewer: str, decision: str, output: Any = None
) -> ReviewRecord:
    """Record (or replace) the decision on a prediction; the same call twice leaves one row."""
    with db.write() as session:
        row = session.execute(
            select(Prediction, Job.schema).join(Job, Prediction.job_id == Job.id).where(Prediction.id == prediction_id)
        ).first()
        if row is None:
            raise ReviewError(f"no prediction {prediction_id}")
        prediction, schema = row
        value = _checked_output(decision, output, schema)
        holder = prediction.review_lease_owner
        expires = prediction.review_lease_expires_at
        if holder and holder != reviewer and expires and expires > utcnow():
            raise ReviewError(f"prediction {prediction_id} is being reviewed by {holder} until {expires:%H:%M:%S} UTC")
        insert = dialect_insert(session)(Review.__table__)
        values = {"prediction_id": prediction_id, "decision": decision, "output": value, "reviewer": reviewer, "created_at": utcnow()}
        session.execute(
            insert.values(**values).on_conflict_do_update(
                index_elements=["prediction_id"],
                set_={key: insert.excluded[key] for key in ("decision", "output", "reviewer", "created_at", "threshold")},
            )
        )
        prediction.reviewed = True
        prediction.review_lease_owner = None
        prediction.review_lease_expires_at = None
        review = session.scalars(select(Review).where(Review.prediction_id == prediction_id)).one()
        return ReviewRecord(review.id, prediction_id, review.decision, review.output, review.reviewer, review.created_at)


def review_counts(db: Database, job_id: int | None = None) -> dict[str, int]:
    """Decisions so far and predictions still unreviewed (for the console's stats)."""
    with db.read() as session:
        decided = select(Review.decision, func.count()).join(Prediction, Review.prediction_id == Prediction.id)
        waiting = select(func.count()).select_from(Prediction).where(Prediction.reviewed.is_(False))
        if job_id is not None:
            decided = decided.where(Prediction.job_id == job_id)
            waiting = waiting.where(Prediction.job_id == job_id)
        counts = {decision: 0 for decision in Decision}
        counts.update(dict(session.execute(decided.group_by(Review.decision)).all()))  # type: ignore[arg-type]
        counts["unreviewed"] = session.scalar(waiting) or 0
    return counts
