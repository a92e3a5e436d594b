"""Labels you can trust: each prediction's per-field confidence, and the threshold an `auto` review was accepted at.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("predictions") as predictions:
        predictions.add_column(sa.Column("field_confidence", JSON, nullable=True))
    with op.batch_alter_table("reviews") as reviews:
        reviews.add_column(sa.Column("threshold", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reviews") as reviews:
        reviews.drop_column("threshold")
    with op.batch_alter_table("predictions") as predictions:
        predictions.drop_column("field_confidence")
