"""Each job remembers its queue: sweepers send a job's items only to the queue it was submitted to.

The database may serve several worker pools on different queues (a GPU type each); a sweeper
topping up or re-sending must not move another pool's job onto its own queue. Jobs submitted
before this migration were on the default queue.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("queue", sa.String(200), nullable=False, server_default="labeler"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("queue")
