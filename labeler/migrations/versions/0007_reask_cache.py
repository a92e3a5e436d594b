"""Re-ask on truncation and each image labelled once: the jobs' counters, the predictions' image hash and cache mark.

`predictions.content_hash` (the image's sha256) with the prompt hash and the model version
keys the prediction cache; one index serves a batch's lookup. Rows written before this
migration have no hash and are never reused.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("reasks", sa.Integer, nullable=False, server_default="0"))
        jobs.add_column(sa.Column("cache_hits", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("predictions") as predictions:
        predictions.add_column(sa.Column("content_hash", sa.String(64), nullable=True))
        predictions.add_column(sa.Column("cached", sa.Boolean, nullable=False, server_default=sa.false()))
        predictions.create_index("ix_predictions_cache", ["content_hash", "prompt_hash", "model_version_id"])


def downgrade() -> None:
    with op.batch_alter_table("predictions") as predictions:
        predictions.drop_index("ix_predictions_cache")
        predictions.drop_column("cached")
        predictions.drop_column("content_hash")
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("cache_hits")
        jobs.drop_column("reasks")
