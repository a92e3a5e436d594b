"""Healing without a person: when each item was last sent, when each job last progressed, worker heartbeats.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("items") as items:
        items.add_column(sa.Column("sent_at", TIME, nullable=True))
        items.create_index("ix_items_status_sent", ["status", "sent_at"])
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("progressed_at", TIME, nullable=True))
    op.create_table(
        "worker_beats",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("queue", sa.String(200), nullable=False),
        sa.Column("job_id", ID, nullable=True),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("last_seen", TIME, nullable=False),
    )
    op.create_index("ix_worker_beats_queue", "worker_beats", ["queue"])


def downgrade() -> None:
    op.drop_index("ix_worker_beats_queue", table_name="worker_beats")
    op.drop_table("worker_beats")
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("progressed_at")
    with op.batch_alter_table("items") as items:
        items.drop_index("ix_items_status_sent")
        items.drop_column("sent_at")
