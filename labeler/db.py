"""Connecting to the labeler database and bringing its schema up to date.

`open_database(url)` is the one way in: it creates the SQLAlchemy engine (SQLite in WAL
mode with a busy timeout, so worker processes and the CLI can share the file) and runs
the Alembic migrations up to head before returning. Concurrent starts are serialised
(a PostgreSQL advisory lock, a file lock beside a SQLite database), so ten workers
starting at once upgrade the schema once.

`Database.write()` is a transaction that takes SQLite's write lock at BEGIN: a
read-then-write transaction in WAL mode could otherwise fail instead of waiting when
another process committed in between.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
T = TypeVar("T")
_ADVISORY_LOCK = 0x6C6C6176  # "llav": the schema-upgrade lock on PostgreSQL
SQLITE_BUSY_TIMEOUT_S = 60


class Database:
    """An engine plus session factories for one database URL."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writers = sessionmaker(self.engine.execution_options(write=True), expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries (no commit)."""
        with self._sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on error."""
        with self._writers() as session, session.begin():
            yield session

    def retrying(self, work: Callable[[Session], T], attempts: int = 5) -> T:
        """Run `work` in a write transaction, again when the database reports a conflict.

        PostgreSQL aborts one side of a deadlock and SQLite gives up after its busy
        timeout; both are OperationalErrors that a fresh attempt gets past.
        """
        for attempt in range(1, attempts + 1):
            try:
                with self.write() as session:
                    return work(session)
            except OperationalError:
                if attempt == attempts:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()


def dialect_insert(session: Session):
    """The `insert` with ON CONFLICT support for the session's database."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg2":
        # executemany of UPDATEs (a batch's items) in one round trip instead of one per row
        return create_engine(url, pool_pre_ping=True, executemany_mode="values_plus_batch")
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection) -> None:
        immediate = connection.get_execution_options().get("write")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def alembic_config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()  # type: ignore[return-value]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _upgrade_lock(engine: Engine) -> Iterator[None]:
    """Serialise schema upgrades across processes."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_LOCK})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK})
                connection.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the schema to `revision` (no-op when already there)."""
    with _upgrade_lock(engine):
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    with _upgrade_lock(engine), engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)


def _forget_inherited_pools() -> None:
    """In a forked child, drop the parent's pooled connections without closing them (SQLAlchemy's advice)."""
    for database in _OPENED:
        database.engine.dispose(close=False)


_OPENED: list[Database] = []
os.register_at_fork(after_in_child=_forget_inherited_pools)


@cache
def _open(url: str, pid: int) -> Database:
    database = Database(url)
    _OPENED.append(database)
    if current_revision(database.engine) != head_revision():
        upgrade(database.engine)
    return database


def open_database(url: str) -> Database:
    """The database at `url`, schema upgraded; one per process."""
    return _open(url, os.getpid())
