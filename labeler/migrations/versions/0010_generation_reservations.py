"""Generations in flight: a batch reserves an (image, prompt, model version) before generating it.

Two batches in flight at once (a worker's threads, or two workers) could otherwise both
generate an image neither has seen; with a reservation the second defers its item until
the first has recorded the answer, which it then copies. A reservation expires with the
lease of the batch that holds it, so a dead worker blocks nobody for longer than that.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "generation_reservations",
        sa.Column("content_hash", sa.String(64), primary_key=True),
        sa.Column("prompt_hash", sa.String(32), primary_key=True),
        sa.Column("model_version_id", ID, sa.ForeignKey("model_versions.id"), primary_key=True),
        sa.Column("owner", sa.String(36), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_generation_reservations_owner", "generation_reservations", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_generation_reservations_owner", table_name="generation_reservations")
    op.drop_table("generation_reservations")
