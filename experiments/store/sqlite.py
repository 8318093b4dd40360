"""The SQLite back-end (the default, one router): stdlib ``sqlite3`` on one connection, in a worker thread.

WAL mode, so the report's reads do not wait on the writer; ``synchronous=NORMAL`` (a committed batch
survives a crash of the router; only a power loss can take the last commits). Other replicas on the
same file see new revisions by polling (``Store.wait_for_change``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.store.base import Store, StoreUnavailable
from experiments.store.sql_schema import SCHEMA_VERSION_TABLE, pending, statements

ID_COLUMN = "INTEGER PRIMARY KEY AUTOINCREMENT"


class SqliteStore(Store):
    """An experiment store in one SQLite file (``sqlite:///relative/path`` or ``sqlite:////absolute/path``)."""

    def __init__(self, url: str, path: Path):
        self.url = url
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, used from worker threads one at a time

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        self._conn = conn
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")  # one migrator at a time across processes
            try:
                conn.execute(SCHEMA_VERSION_TABLE)
                current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
                for m in pending(current):
                    for sql in statements(m, ID_COLUMN):
                        conn.execute(sql)
                    conn.execute("INSERT INTO schema_version VALUES (?, ?, ?)", (m.version, m.description, time.time()))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(self._close, conn)

    def _close(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            conn.close()

    def _in_thread(self, fn, *args) -> Any:
        if self._conn is None:
            raise StoreUnavailable(f"store {self.url} is not open")
        with self._lock:
            try:
                return fn(self._conn, *args)
            except sqlite3.OperationalError as e:
                raise StoreUnavailable(f"store {self.url}: {e}") from e

    async def _run(self, stmts: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> list[int]:
        """One ``BEGIN IMMEDIATE`` transaction: it holds SQLite's one write lock from its start, so writers of
        every process on the file run one at a time (no ``_lock_statements`` needed)."""
        def run(conn: sqlite3.Connection) -> list[int]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                counts = [conn.executemany(sql, rows).rowcount for sql, rows in stmts]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return counts
        return await asyncio.to_thread(self._in_thread, run)

    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return await asyncio.to_thread(self._in_thread, lambda conn: conn.execute(sql, list(params)).fetchall())

    async def _add_revision_sql(self, row: tuple) -> None:
        experiment = row[0]
        await self._run([("INSERT INTO revisions (experiment, revision, spec, source, who, why, at) "
                          "SELECT ?, COALESCE(MAX(revision), 0) + 1, ?, ?, ?, ?, ? FROM revisions WHERE experiment = ?",
                          [(*row, experiment)])])


def sqlite_path(url: str) -> Path:
    """``sqlite:///reports/x.sqlite`` -> ``reports/x.sqlite``; ``sqlite:////tmp/x.sqlite`` -> ``/tmp/x.sqlite``."""
    rest = url[len("sqlite://"):]
    if not rest.startswith("/") or len(rest) < 2:
        raise ValueError(f"store URL {url!r} must look like sqlite:///relative/path.sqlite or sqlite:////abs/path")
    return Path(rest[1:])
