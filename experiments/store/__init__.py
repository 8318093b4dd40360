"""The experiment store: state that survives restarts and is shared by a fleet of routers.

    async with open_store("sqlite:///reports/ab.store.sqlite") as store:   # or "postgresql://user:pw@host/db"
        ...                                                             # opened (schema migrated), closed after

One interface (``base.Store``), two back-ends (``sqlite.py``, the default for one router;
``postgres.py`` for several), a versioned schema (``sql_schema.py``), the rows a router records
(``records.py``) and how a batch of them is written (``batch.py``), the background writer that keeps the
store off the request path (``writer.py``), feedback that is never lost (``feedback.py``), the judge's unit
table (``unit_table.py``), the drift monitor's windows (``drift_windows.py``), the replica sync of the
experiment's revisions (``sync.py``), and the retrain loop's kept inputs, steps and lease (``loop_tables.py``).
"""

from __future__ import annotations

from pathlib import Path

from experiments.spec_checks import store_url_problem
from experiments.store.base import (
    AnswerRow,
    DriftReferenceRow,
    DriftSample,
    DuplicateFeedback,
    ErrorRow,
    Revision,
    ShadowRow,
    Store,
    StoreError,
    StoreUnavailable,
    audit_entry,
)

STORE_ENV = "TUNESTACK_ROUTER_STORE"
"""The environment variable a router reads its store URL from when ``--store`` is not given (a k8s Secret)."""


def default_store_url(experiment_file: str | Path) -> str:
    """The default: a SQLite file beside the experiment file (``reports/demo-*/experiment.store.sqlite``)."""
    path = Path(experiment_file)
    return f"sqlite:///{path.with_name(path.stem + '.store.sqlite')}"


def open_store(url: str) -> Store:
    """The back-end for ``url`` (not yet opened: ``await store.open()``)."""
    problem = store_url_problem(url)
    if problem:
        raise StoreError(problem)
    if url.startswith("sqlite:///"):
        from experiments.store.sqlite import SqliteStore, sqlite_path

        return SqliteStore(url, sqlite_path(url))
    from experiments.store.postgres import PostgresStore

    return PostgresStore(url)


__all__ = ["AnswerRow", "DriftReferenceRow", "DriftSample", "DuplicateFeedback", "ErrorRow", "Revision", "ShadowRow",
           "Store", "StoreError", "STORE_ENV", "StoreUnavailable", "audit_entry", "default_store_url", "open_store"]
