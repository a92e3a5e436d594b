"""JSON columns keep their text on PostgreSQL: `json`, not `jsonb`, which reorders object keys.

A job's schema decides the prompt (its properties, in order), and a reviewed answer becomes a
training target: with `jsonb` both came back with keys sorted by length then name, so a job on
PostgreSQL prompted the model differently than the same job on SQLite, and the retrain taught
an order the prompts never ask for. Rows written before this migration keep the order `jsonb`
gave them. SQLite stores JSON as text already: nothing to do there.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COLUMNS = {
    "model_versions": ("metrics",),
    "jobs": ("schema", "generation"),
    "items": ("metadata", "reference"),
    "predictions": ("json", "field_confidence"),
    "reviews": ("output",),
}


def _convert(type_: sa.types.TypeEngine, cast: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=type_, postgresql_using=f'"{column}"::{cast}')


def upgrade() -> None:
    _convert(sa.JSON(), "json")


def downgrade() -> None:
    _convert(postgresql.JSONB(), "jsonb")
