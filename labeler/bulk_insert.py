"""Bulk inserts at the database's own speed: COPY on PostgreSQL, a driver-level executemany elsewhere.

A million-item submit spends much of its time handing rows to the database; SQLAlchemy's
Core insert compiles and processes every parameter of every row in Python. Here values
come column by column (one list per column, no dict per row), each goes through the
column type's own bind processor once (so JSON, times and enums are stored exactly as
the ORM stores them), then straight to the driver.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
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


def insert_columns(session: Session, table: Table, columns: Mapping[str, Sequence[Any]]) -> None:
    """Insert rows given as `columns` (column name -> that column's values, all of one length) into
    `table` in the session's transaction."""
    values = _processed(session, table, columns)
    if not values or not values[0]:
        return
    connection = session.connection()
    quoted = ", ".join(connection.dialect.identifier_preparer.quote(name) for name in columns)
    name = connection.dialect.identifier_preparer.format_table(table)
    if connection.dialect.name == "postgresql":
        fields = ([r"\N" if value is None else _copy_text(value) for value in column] for column in values)
        buffer = io.StringIO("".join(line + "\n" for line in map("\t".join, zip(*fields))))
        with connection.connection.dbapi_connection.cursor() as cursor:
            cursor.copy_expert(f"COPY {name} ({quoted}) FROM STDIN", buffer)
        return
    marks = ", ".join("?" if connection.dialect.paramstyle == "qmark" else "%s" for _ in columns)
    connection.exec_driver_sql(f"INSERT INTO {name} ({quoted}) VALUES ({marks})", list(zip(*values)))
