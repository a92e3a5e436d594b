"""Initial schema: model versions, jobs, items, predictions, reviews.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)
RUNNING = sa.text("status = 'running'")


def _id() -> sa.Column:
    return sa.Column("id", ID, primary_key=True)


def upgrade() -> None:
    op.create_table(
        "model_versions",
        _id(),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("parent_id", ID, sa.ForeignKey("model_versions.id"), nullable=True),
        sa.Column("metrics", JSON, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_table(
        "jobs",
        _id(),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("instruction", sa.Text(), nullable=True),
        sa.Column("schema", JSON, nullable=True),
        sa.Column("generation", JSON, nullable=False),
        sa.Column("model_version_id", ID, sa.ForeignKey("model_versions.id"), nullable=True),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("cancelled", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "items",
        _id(),
        sa.Column("job_id", ID, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("question", sa.Text(), nullable=True),
        sa.Column("metadata", JSON, nullable=True),
        sa.Column("reference", JSON, nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(36), nullable=True),
        sa.Column("lease_expires_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
    )
    op.create_index("ix_items_job_status_id", "items", ["job_id", "status", "id"])
    op.create_index(
        "ix_items_running_lease", "items", ["lease_expires_at"], sqlite_where=RUNNING, postgresql_where=RUNNING
    )
    op.create_table(
        "predictions",
        _id(),
        sa.Column("item_id", ID, sa.ForeignKey("items.id"), nullable=False),
        sa.Column("job_id", ID, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("model_version_id", ID, sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("prompt_hash", sa.String(32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("json", JSON, nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("finish_reason", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("reviewed", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("review_lease_owner", sa.String(200), nullable=True),
        sa.Column("review_lease_expires_at", TIME, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.UniqueConstraint("item_id", "model_version_id", "prompt_hash", name="uq_predictions_item_model_prompt"),
    )
    op.create_index("ix_predictions_review_queue", "predictions", ["job_id", "reviewed", "confidence"])
    op.create_table(
        "reviews",
        _id(),
        sa.Column("prediction_id", ID, sa.ForeignKey("predictions.id"), nullable=False, unique=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("output", JSON, nullable=True),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("reviews")
    op.drop_index("ix_predictions_review_queue", table_name="predictions")
    op.drop_table("predictions")
    op.drop_index("ix_items_running_lease", table_name="items")
    op.drop_index("ix_items_job_status_id", table_name="items")
    op.drop_table("items")
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("model_versions")
