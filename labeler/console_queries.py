"""Read queries the review console's pages need: browse, failures by reason, review rates.

The console reads and writes only through the labeler; these are the labeler-side
functions for its pages: browsing items with their predictions and reviews, failures
grouped by reason, and acceptance and edit rates per model version and job. Each
returns plain dataclasses, never ORM rows, so `ui/` holds no SQL and no sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import aliased

from labeler.db import Database
from labeler.models import Decision, Item, ItemState, ModelVersion, Prediction, Review
from labeler.review import PredictionFilter


@dataclass(frozen=True)
class BrowseRow:
    """One item with one of its predictions (if any) and that prediction's review (if any)."""

    item_id: int
    job_id: int
    uri: str
    item_status: str
    error: str | None
    question: str | None
    prediction_id: int | None
    model_version: str | None
    text: str | None
    output_json: Any
    confidence: float | None
    decision: str | None
    reviewer: str | None
    reviewed_output: Any
    reviewed_at: datetime | None


@dataclass(frozen=True)
class BrowseQuery:
    """Items to list: the prediction filter, the item's state, and a search in paths, questions and answers."""

    predictions: PredictionFilter = field(default_factory=PredictionFilter)
    item_status: str | None = None
    search: str | None = None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class BrowsePage:
    rows: list[BrowseRow]
    total: int


def browse(db: Database, wanted: BrowseQuery) -> BrowsePage:
    """A page of items (newest job first, then item order) with their predictions and reviews, and the total."""
    job_id = wanted.predictions.job_id
    only_predicted = wanted.predictions != PredictionFilter(job_id=job_id)  # a prediction filter drops unpredicted items
    query = (
        select(Item, Prediction, ModelVersion.name, Review)
        .join(Prediction, Item.id == Prediction.item_id, isouter=not only_predicted)
        .outerjoin(ModelVersion, Prediction.model_version_id == ModelVersion.id)
        .outerjoin(Review, Review.prediction_id == Prediction.id)
    )
    query = replace(wanted.predictions, job_id=None).apply(query)  # the job restricts items, predicted or not
    if job_id is not None:
        query = query.where(Item.job_id == job_id)
    if wanted.item_status:
        query = query.where(Item.status == wanted.item_status)
    if wanted.search:
        pattern = f"%{wanted.search.lower()}%"
        query = query.where(
            or_(
                func.lower(Item.uri).like(pattern),
                func.lower(func.coalesce(Item.question, "")).like(pattern),
                func.lower(func.coalesce(Prediction.text, "")).like(pattern),
            )
        )
    with db.read() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.execute(query.order_by(Item.job_id.desc(), Item.id, Prediction.id).limit(wanted.limit).offset(wanted.offset)).all()
    return BrowsePage([_browse_row(*row) for row in rows], total)


def _browse_row(item: Item, prediction: Prediction | None, model_version: str | None, review: Review | None) -> BrowseRow:
    return BrowseRow(
        item_id=item.id,
        job_id=item.job_id,
        uri=item.uri,
        item_status=item.status,
        error=item.error,
        question=item.question,
        prediction_id=prediction.id if prediction else None,
        model_version=model_version,
        text=prediction.text if prediction else None,
        output_json=prediction.output_json if prediction else None,
        confidence=prediction.confidence if prediction else None,
        decision=review.decision if review else None,
        reviewer=review.reviewer if review else None,
        reviewed_output=review.output if review else None,
        reviewed_at=review.created_at if review else None,
    )


@dataclass(frozen=True)
class FailureReason:
    reason: str
    count: int
    example_uri: str


def failure_reasons(db: Database, job_id: int, *, limit: int = 20) -> list[FailureReason]:
    """A job's failed items grouped by their reason, most frequent first."""
    reason = func.coalesce(Item.error, "(no reason recorded)")
    with db.read() as session:
        rows = session.execute(
            select(reason, func.count(), func.min(Item.uri))
            .where(Item.job_id == job_id, Item.status == ItemState.FAILED)
            .group_by(reason)
            .order_by(func.count().desc(), reason)
            .limit(limit)
        ).all()
    return [FailureReason(text, count, uri) for text, count, uri in rows]


@dataclass(frozen=True)
class ReviewRates:
    """How reviewers judged one model version's predictions in one job."""

    model_version_id: int
    model_version: str
    job_id: int
    predictions: int
    accepted: int
    edited: int
    rejected: int

    @property
    def reviewed(self) -> int:
        return self.accepted + self.edited + self.rejected

    @property
    def acceptance_rate(self) -> float | None:
        """Share of reviewed predictions taken unchanged."""
        return self.accepted / self.reviewed if self.reviewed else None

    @property
    def edit_rate(self) -> float | None:
        """Share of reviewed predictions a reviewer had to correct."""
        return self.edited / self.reviewed if self.reviewed else None


def review_rates(db: Database) -> list[ReviewRates]:
    """Predictions and review decisions per (model version, job), oldest version first."""
    decided = aliased(Review)

    def count(decision: str):
        return func.sum(case((decided.decision == decision, 1), else_=0))

    with db.read() as session:
        rows = session.execute(
            select(
                ModelVersion.id,
                ModelVersion.name,
                Prediction.job_id,
                func.count(Prediction.id),
                count(Decision.ACCEPT),
                count(Decision.EDIT),
                count(Decision.REJECT),
            )
            .join(Prediction, Prediction.model_version_id == ModelVersion.id)
            .outerjoin(decided, decided.prediction_id == Prediction.id)
            .group_by(ModelVersion.id, ModelVersion.name, Prediction.job_id)
            .order_by(ModelVersion.id, Prediction.job_id)
        ).all()
    return [ReviewRates(mv, name, job, int(n), int(a or 0), int(e or 0), int(r or 0)) for mv, name, job, n, a, e, r in rows]
