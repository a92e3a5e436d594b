"""A job's multiple-choice options are stored as `choices` in `jobs.generation` (was `options`).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JOBS = sa.table("jobs", sa.column("id", sa.BigInteger), sa.column("generation", sa.JSON))


def _rename(old: str, new: str) -> None:
    connection = op.get_bind()
    for job_id, generation in connection.execute(sa.select(JOBS.c.id, JOBS.c.generation)).all():
        if isinstance(generation, dict) and old in generation:
            renamed = {new if key == old else key: value for key, value in generation.items()}
            connection.execute(sa.update(JOBS).where(JOBS.c.id == job_id).values(generation=renamed))


def upgrade() -> None:
    _rename("options", "choices")


def downgrade() -> None:
    _rename("choices", "options")
