"""SQL text helpers of the warehouse modules (identifiers and literals in DDL)."""

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def _quote(conn: Connection, identifier: str) -> str:
    return conn.dialect.identifier_preparer.quote(identifier)


def _literal(conn: Connection, value: str) -> str:
    """A SQL string literal for DDL, where bound parameters are not allowed."""
    return (
        sa.literal(value, sa.String())
        .compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        .string
    )
