"""Where the data lives, and engines that behave well on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from autotune.errors import DependencyError, InputError, StoreError

BUSY_TIMEOUT_MS = 30_000


def default_path() -> Path:
    """One SQLite file in the user's data directory."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("autotune", appauthor=False)) / "autotune.db"


def resolve_url(url: str | None = None) -> str:
    """``--db`` first, then ``AUTOTUNE_DB``, then the default file. A bare path means SQLite."""
    url = url or os.environ.get("AUTOTUNE_DB") or str(default_path())
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    return url


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def describe(url: str) -> str:
    """The file path for SQLite, else the URL without its password."""
    path = sqlite_path(url)
    return str(path) if path else make_url(url).render_as_string(hide_password=True)


def create(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL, a busy timeout and foreign keys."""
    path = sqlite_path(url)
    if path is not None:
        _prepare_sqlite_file(path)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InputError(
            f"cannot read database URL {url!r}: write e.g. sqlite:///path/autotune.db or postgresql+psycopg://host/db"
        ) from None
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
    except NoSuchModuleError:
        raise InputError(
            f"unknown database kind {parsed.drivername!r} in {describe(url)}: use sqlite:/// or postgresql+psycopg://"
        ) from None
    except ModuleNotFoundError as exc:
        if parsed.get_backend_name() == "postgresql":
            raise DependencyError(f"a PostgreSQL store needs the driver {exc.name} (pip install 'autotune[postgres]')") from None
        raise DependencyError(f"the database driver {exc.name} is not installed (pip install {exc.name})") from None
    return engine


def _prepare_sqlite_file(path: Path) -> None:
    if path.is_dir():
        raise StoreError(f"cannot use {path} as the database: it is a directory (give a file path with --db or AUTOTUNE_DB)")
    if path.exists():
        # The file's header is left to SQLite to judge ("file is not a database"): opening and
        # closing any descriptor of a database file drops every SQLite lock this process holds on it.
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
            raise StoreError(f"cannot write the database {path}: permission denied (choose another with --db or AUTOTUNE_DB)")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the database directory {path.parent}: {exc.strerror} (choose another with --db or AUTOTUNE_DB)"
        ) from None
    if not os.access(path.parent, os.W_OK):
        raise StoreError(f"cannot write the database {path}: {path.parent} is not writable (choose another with --db or AUTOTUNE_DB)")


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
