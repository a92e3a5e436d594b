"""Bulk inserts at the database's own speed: COPY on PostgreSQL, a driver-level executemany elsewhere.

A million-item submit spends most of its time handing rows to the database; SQLAlchemy's
Core insert compiles and processes every parameter of every row in Python. Here each
value goes through the column type's own bind processor once (so JSON, times and enums
are stored exactly as the ORM stores them), then straight to the driver.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session


def _processed(session: Session, table: Table, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[tuple]:
    dialect = session.get_bind().dialect
    processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns]
    return [
        tuple(value if value is None or process is None else process(value) for process, value in zip(processors, (row[name] for name in columns)))
        for row in rows
    ]


def _copy_field(value: Any) -> str:
    """One field of PostgreSQL's COPY text format."""
    if value is None:
        return r"\N"
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `rows` (dicts with the same keys) into `table` in the session's transaction."""
    if not rows:
        return
    columns = list(rows[0])
    values = _processed(session, table, columns, rows)
    connection = session.connection()
    quoted = ", ".join(connection.dialect.identifier_preparer.quote(name) for name in columns)
    name = connection.dialect.identifier_preparer.format_table(table)
    if connection.dialect.name == "postgresql":
        buffer = io.StringIO("".join("\t".join(map(_copy_field, row)) + "\n" for row in values))
        with connection.connection.dbapi_connection.cursor() as cursor:
            cursor.copy_expert(f"COPY {name} ({quoted}) FROM STDIN", buffer)
        return
    marks = ", ".join("?" if connection.dialect.paramstyle == "qmark" else "%s" for _ in columns)
    connection.exec_driver_sql(f"INSERT INTO {name} ({quoted}) VALUES ({marks})", values)
