"""Every Alembic migration runs up and down on SQLite and on PostgreSQL, and head matches the models."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from labeler.db import alembic_config, current_revision, downgrade, make_engine, open_database, upgrade
from labeler.models import Base

TABLES = {"jobs", "items", "predictions", "reviews", "model_versions"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/migrations.db"
    return request.getfixturevalue("new_pg_database")()


def _revisions() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def _schema_diff(engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_every_migration_up_and_down(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        revisions = _revisions()
        assert revisions, "no migrations found"
        for revision in revisions:
            upgrade(engine, revision)
            assert current_revision(engine) == revision
        assert TABLES <= set(inspect(engine).get_table_names())
        assert _schema_diff(engine) == [], "the migrations and labeler/models.py disagree"
        for previous in [*reversed(revisions[:-1]), "base"]:
            downgrade(engine, previous)
            assert current_revision(engine) == (None if previous == "base" else previous)
        assert not TABLES & set(inspect(engine).get_table_names())
        upgrade(engine)  # and up again from nothing
        assert _schema_diff(engine) == []
    finally:
        downgrade(engine, "base")
        engine.dispose()


def test_stored_multiple_choice_options_become_choices(database_url: str) -> None:
    engine = make_engine(database_url)
    counts = ("batch_size", "total", "done", "failed", "cancelled")
    jobs = sa.table("jobs", sa.column("generation", sa.JSON), *(sa.column(c) for c in ("source", "task", "status", "created_at", *counts)))
    row = {"source": "s", "task": "vqa", "status": "completed", "created_at": datetime.now(UTC), **dict.fromkeys(counts, 1)}

    def stored() -> dict:
        with engine.connect() as connection:
            return connection.execute(sa.select(jobs.c.generation)).scalar_one()

    try:
        upgrade(engine, "0002")
        with engine.begin() as connection:
            connection.execute(sa.insert(jobs).values(generation={"options": ["a", "b"], "seed": 1}, **row))
        upgrade(engine)
        assert stored() == {"choices": ["a", "b"], "seed": 1}
        downgrade(engine, "0002")
        assert stored() == {"options": ["a", "b"], "seed": 1}
    finally:
        downgrade(engine, "base")
        engine.dispose()


def test_the_app_upgrades_the_schema_on_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fresh/labeler.db"
    database = open_database(url)
    assert current_revision(database.engine) == _revisions()[-1]
    assert TABLES <= set(inspect(database.engine).get_table_names())
    database.dispose()
