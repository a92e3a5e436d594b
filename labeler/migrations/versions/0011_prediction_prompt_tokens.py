"""Each prediction's prompt length in LLM positions (the image's features included).

What a batch output's `usage.prompt_tokens` reports, and what a prompt cost to run. Rows
written before this migration have none (reported as 0).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as predictions:
        predictions.add_column(sa.Column("prompt_tokens", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as predictions:
        predictions.drop_column("prompt_tokens")
