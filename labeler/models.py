"""The labeler's tables: jobs, their items, predictions, reviews and model versions.

One schema for SQLite (the embedded default) and PostgreSQL (a cluster); Alembic
migrations in `labeler/migrations` create it. The indexes are chosen for the queries
that run at millions of items: a job's items by status in id order (claiming, resuming,
retrying, exporting), running items by lease expiry (recovering a killed worker's
items), pending items by when they were last sent (re-sending what a broker lost), and a
job's unreviewed predictions by confidence (the review queue), predictions by image, prompt
and model version (the prediction cache: each image is labelled once). Status
counts are counters on the job row, updated in the same transaction as the items.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy import text as sql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class JobState(StrEnum):
    """A job's state: `submitting` until every batch is enqueued; the finished states are final."""

    SUBMITTING = "submitting"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class ItemState(StrEnum):
    """An item's state: every item ends in exactly one of DONE, FAILED, CANCELLED."""

    PENDING = "pending"
    CLAIMED = "running"  # under a worker's lease (the stored value predates the name)
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Decision(StrEnum):
    """A reviewer's verdict on a prediction."""

    ACCEPT = "accept"
    EDIT = "edit"
    REJECT = "reject"
    AUTO = "auto"  # accepted without a person, above a threshold measured on the job's reviews (labeler.auto_accept)


class ModelState(StrEnum):
    """A model version's state: a retrain candidate that lost its evaluation ends REJECTED; one whose
    training or evaluation broke, FAILED."""

    CANDIDATE = "candidate"
    ACTIVE = "active"
    RETIRED = "retired"
    REJECTED = "rejected"
    FAILED = "failed"


ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)
RUNNABLE_JOB_STATES = (JobState.SUBMITTING, JobState.QUEUED, JobState.RUNNING)
FINISHED_JOB_STATES = (JobState.COMPLETED, JobState.CANCELLED)

Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite only auto-increments INTEGER PRIMARY KEY
Json = JSON()  # `json` on PostgreSQL keeps object keys in order (a schema's order is its prompt); `jsonb` sorts them


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in Python on both databases (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class ModelVersion(Base):
    """A model that produced (or may produce) predictions; training registers and promotes them."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    uri: Mapped[str] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(16), default=ModelState.CANDIDATE)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(Text)
    task: Mapped[str] = mapped_column(String(16))
    instruction: Mapped[str | None] = mapped_column(Text)
    schema: Mapped[dict[str, Any] | None] = mapped_column(Json)
    generation: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    batch_size: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(200), default="labeler", server_default="labeler")  # where its batches go
    status: Mapped[str] = mapped_column(String(16), default=JobState.SUBMITTING, index=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    cancelled: Mapped[int] = mapped_column(Integer, default=0)
    reasks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # JSON answers asked again after a cut-off
    cache_hits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # items given an earlier prediction
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    progressed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # when an item last finished
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        Index("ix_items_job_status_id", "job_id", "status", "id"),
        Index("ix_items_job_id", "job_id", "id"),  # a job's items in id order, whatever their state (exports, browse)
        Index(
            "ix_items_running_lease",
            "lease_expires_at",
            sqlite_where=sql("status = 'running'"),
            postgresql_where=sql("status = 'running'"),
        ),
        Index("ix_items_status_sent", "status", "sent_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    uri: Mapped[str] = mapped_column(Text)
    question: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", Json)
    reference: Mapped[Any] = mapped_column(Json, nullable=True)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=ItemState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # when a message for it last went to the broker
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Prediction(Base):
    """One model's answer for one item and prompt; re-running a batch updates, never duplicates."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("item_id", "model_version_id", "prompt_hash", name="uq_predictions_item_model_prompt"),
        Index("ix_predictions_review_queue", "job_id", "reviewed", "confidence"),
        Index("ix_predictions_cache", "content_hash", "prompt_hash", "model_version_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    prompt_hash: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    output_json: Mapped[Any] = mapped_column("json", Json, nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float)
    field_confidence: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)  # engine.field_confidence
    tokens: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)  # the prompt's LLM positions, image features included
    finish_reason: Mapped[str] = mapped_column(String(16))
    latency_ms: Mapped[float] = mapped_column(Float)
    content_hash: Mapped[str | None] = mapped_column(String(64))  # the image's sha256: the prediction cache's key
    cached: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # copied from an earlier prediction
    reviewed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    review_lease_owner: Mapped[str | None] = mapped_column(String(200))
    review_lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Review(Base):
    """A person's decision on a prediction; one per prediction (the latest decision wins)."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id"), unique=True)
    decision: Mapped[str] = mapped_column(String(16))
    output: Mapped[Any] = mapped_column(Json, nullable=True)
    reviewer: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    threshold: Mapped[float | None] = mapped_column(Float)  # the confidence an `auto` decision was accepted above


class Lock(Base):
    """A named lock that expires: one retrain at a time, across pods, on SQLite and PostgreSQL alike.

    A holder renews `expires_at` while it works; a lock past its expiry belongs to nobody
    (its holder crashed), so a dead retrain never blocks the next one for longer than that.
    """

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WorkerBeat(Base):
    """A worker's heartbeat: a worker whose row is not renewed is gone, so a job can say it has none."""

    __tablename__ = "worker_beats"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(200), index=True)
    job_id: Mapped[int | None] = mapped_column(Id)  # the job of the last batch it received (no FK: jobs may be discarded)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)


class GenerationReservation(Base):
    """An (image, prompt, model version) a batch is generating: other batches defer their items with it.

    It lives as long as the holder's lease (renewed by the same heartbeat) and is deleted when
    the holder records its batch, so a crashed holder blocks the key no longer than its items."""

    __tablename__ = "generation_reservations"

    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    prompt_hash: Mapped[str] = mapped_column(String(32), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(36), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
