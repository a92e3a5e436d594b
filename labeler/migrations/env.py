"""Alembic environment: runs on the connection `labeler.db` hands over (never a URL of its own)."""

from __future__ import annotations

from alembic import context

from labeler.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through labeler.db.upgrade(), which passes a connection")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
