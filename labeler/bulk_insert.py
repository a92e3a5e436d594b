"""Bulk inserts at the database's own speed: COPY on PostgreSQL, a driver-level executemany elsewhere.

A million-item submit spends much of its time handing rows to the database; SQLAlchemy's
Core insert compiles and processes every parameter of every row in Python. Here values
come column by column (one list per column, no dict per row), each goes through the
column type's own bind processor once (so JSON, times and enums are stored exactly as
the ORM stores them), then straight to the driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session


def _processed(session: Session, table: Table, columns: Mapping[str, Sequence[Any]]) -> list[Sequence[Any]]:
    """Each column's values through its type's bind processor, one comprehension per column."""
    dialect = session.get_bind().dialect
    processed = []
    for name, values in columns.items():
        process = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        processed.append(values if process is None else [None if value is None else process(value) for value in values])
    return processed


def _copy_text(value: Any) -> str:
    """One non-null field of PostgreSQL's COPY text format."""
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_lines(session: Session, table: Table, columns: Mapping[str, Sequence[Any]]) -> str:
    """`columns` as lines of PostgreSQL's COPY text format."""
    fields = ([r"\N" if value is None else _copy_text(value) for value in column] for column in _processed(session, table, columns))
    return "".join(line + "\n" for line in map("\t".join, zip(*fields)))


class _CopyStream:
    """A file for `copy_expert` that formats the next chunk of rows only when the driver asks for more
    data: the server ingests one chunk (parsing, indexes) while this process reads the next."""

    def __init__(self, session: Session, table: Table, chunks: Iterator[Mapping[str, Sequence[Any]]]):
        self.session, self.table, self.chunks = session, table, chunks
        self.error: BaseException | None = None  # what reading the rows raised: the driver only says "cancelled"

    def read(self, size: int = -1) -> str:  # any length: the driver sends what it gets
        try:
            chunk = next(self.chunks, None)
            return "" if chunk is None else _copy_lines(self.session, self.table, chunk)
        except BaseException as exc:  # the driver cancels the COPY; the caller raises this instead
            self.error = exc
            raise


def insert_columns(session: Session, table: Table, chunks: Iterable[Mapping[str, Sequence[Any]]]) -> None:
    """Insert `chunks` of rows, each given as columns (column name -> that column's values, all of one
    length; the same names in every chunk), into `table` in the session's transaction. On PostgreSQL
    they stream through one COPY."""
    chunks = iter(chunks)
    first = next(chunks, None)
    if first is None:
        return
    connection = session.connection()
    quoted = ", ".join(connection.dialect.identifier_preparer.quote(name) for name in first)
    name = connection.dialect.identifier_preparer.format_table(table)
    if connection.dialect.name == "postgresql":
        stream = _CopyStream(session, table, chain([first], chunks))
        with connection.connection.dbapi_connection.cursor() as cursor:
            try:
                cursor.copy_expert(f"COPY {name} ({quoted}) FROM STDIN", stream)
            except Exception:
                if stream.error is not None:  # a bad manifest line, say, not the database: raise that
                    raise stream.error from None
                raise
        return
    marks = ", ".join("?" if connection.dialect.paramstyle == "qmark" else "%s" for _ in first)
    for columns in chain([first], chunks):
        connection.exec_driver_sql(f"INSERT INTO {name} ({quoted}) VALUES ({marks})", list(zip(*_processed(session, table, columns))))
