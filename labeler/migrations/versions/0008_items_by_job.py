"""A job's items in id order, whatever their state: exports and the console page through them.

Without it PostgreSQL served `WHERE job_id = ? AND id > ? ORDER BY id LIMIT n` from the
(job_id, status, id) index and sorted the whole job for every page: exporting a
million-item job took minutes, growing with the square of the job.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_items_job_id", "items", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_items_job_id", table_name="items")
