"""The PostgreSQL back-end (a fleet of routers): ``psycopg`` 3 async on a ``psycopg_pool`` pool.

A new revision is announced with ``NOTIFY tunestack_revisions, '<experiment>'`` in the transaction
that stores it; every replica ``LISTEN``s on its own connection and re-reads the revision at once
(``wait_for_change``), with a poll as the safety net while that connection is being re-made.
Migrations run under an advisory lock, so replicas starting together apply each step once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from experiments.store.base import Store, StoreUnavailable
from experiments.store.sql_schema import SCHEMA_VERSION_TABLE, pending, statements

log = logging.getLogger(__name__)

ID_COLUMN = "BIGSERIAL PRIMARY KEY"
CHANNEL = "tunestack_revisions"
MIGRATION_LOCK = 74_740_012
"""``pg_advisory_xact_lock`` key held while migrating."""
CONNECT_TIMEOUT_S = 3
POOL_TIMEOUT_S = 3.0


def _sql(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresStore(Store):
    """An experiment store in a PostgreSQL database (``postgresql://user:pass@host/db`` or a unix socket)."""

    def __init__(self, url: str, pool_size: int = 4):
        self.url = url
        self._pool = AsyncConnectionPool(url, min_size=1, max_size=pool_size, open=False, timeout=POOL_TIMEOUT_S,
                                         kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
                                         check=AsyncConnectionPool.check_connection)
        self._listener: psycopg.AsyncConnection | None = None

    async def open(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 3)
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
                await conn.execute(SCHEMA_VERSION_TABLE)
                current = (await (await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")).fetchone())[0]
                for m in pending(current):
                    for sql in statements(m, ID_COLUMN):
                        await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_version VALUES (%s, %s, %s)",
                                       [m.version, m.description, time.time()])
        except (psycopg.OperationalError, PoolTimeout) as e:
            await self._pool.close()
            raise StoreUnavailable(f"cannot open the store {_safe(self.url)}: {e}") from e

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close()
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self):
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as e:
            raise StoreUnavailable(f"store {_safe(self.url)}: {type(e).__name__}: {e}") from e

    async def _run(self, stmts: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> list[int]:
        counts = []
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            for sql, rows in stmts:
                await cur.executemany(_sql(sql), rows)
                counts.append(cur.rowcount)
        return counts

    def _lock_statements(self, experiment: str) -> list[tuple[str, Sequence[Sequence[Any]]]]:
        """``pg_advisory_xact_lock`` on the experiment's key, held until the transaction ends."""
        return [("SELECT pg_advisory_xact_lock(?)", [(experiment_lock(experiment),)])]

    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Rows in PostgreSQL's binary format: half the parsing of text for the unit table's numbers."""
        async with self._connection() as conn, conn.cursor(binary=True) as cur:
            await cur.execute(_sql(sql), list(params))
            return await cur.fetchall()

    async def _add_revision_sql(self, row: tuple) -> None:
        experiment = row[0]
        for attempt in range(5):  # two replicas writing at once: one gets the next number, the other retries
            try:
                async with self._connection() as conn, conn.transaction():
                    await conn.execute(
                        "INSERT INTO revisions (experiment, revision, spec, source, who, why, at) "
                        "SELECT %s, COALESCE(MAX(revision), 0) + 1, %s, %s, %s, %s, %s FROM revisions "
                        "WHERE experiment = %s", [*row, experiment])
                    await conn.execute("SELECT pg_notify(%s, %s)", [CHANNEL, experiment])
                return
            except psycopg.errors.UniqueViolation:
                log.info("revision number taken by another replica; retrying (%d)", attempt + 1)
        raise StoreUnavailable(f"could not store a revision of {experiment!r}: the revision number kept clashing")

    async def wait_for_change(self, experiment: str, timeout: float) -> None:
        """Wait for a NOTIFY on ``CHANNEL`` (any experiment: the caller re-reads its own) or ``timeout``."""
        try:
            if self._listener is None or self._listener.closed:
                self._listener = await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                                      connect_timeout=CONNECT_TIMEOUT_S)
                await self._listener.execute(f"LISTEN {CHANNEL}")
            async for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                break
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            log.debug("LISTEN connection lost (%s); polling", e)
            listener, self._listener = self._listener, None
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.close()
            await asyncio.sleep(timeout)


def experiment_lock(experiment: str) -> int:
    """The advisory-lock key of ``experiment``'s answers and feedback: a signed 64-bit hash of its name."""
    digest = hashlib.blake2b(f"tunestack-experiment\x1f{experiment}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _safe(url: str) -> str:
    """The URL without its password, for logs and errors."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)
