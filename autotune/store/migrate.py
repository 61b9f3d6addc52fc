"""Schema versions: check on open, upgrade through Alembic, refuse what a newer autotune wrote.

The check on open is plain SQL, so that commands that only read start without importing Alembic.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sqlalchemy import Engine, inspect, text

from autotune.errors import NotAnAutotuneDatabaseError, SchemaTooNewError
from autotune.store.schema import VERSION_TABLE

#: Every revision this autotune knows, oldest first; the last is the head. A test keeps this
#: equal to the scripts in migrations/versions.
REVISIONS = ("0001", "0002", "0003", "0004", "0005")
HEAD = REVISIONS[-1]


def script_location() -> str:
    """migrations/ at the repository's top, or ``autotune/migrations`` inside a wheel."""
    spec = importlib.util.find_spec("autotune.migrations")
    if spec is not None and spec.submodule_search_locations:
        return str(list(spec.submodule_search_locations)[0])
    return str(Path(__file__).resolve().parents[2] / "migrations")


def current_revision(engine: Engine) -> str | None:
    """The schema revision stored in the database, or ``None`` for a database without one."""
    tables = set(inspect(engine).get_table_names())
    if VERSION_TABLE not in tables:
        return None
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def ensure_schema(engine: Engine, where: str) -> bool:
    """Bring the database to :data:`HEAD`; return whether anything was migrated.

    A revision this autotune does not know was written by a newer one: refuse, change nothing.
    A SQLite file holding other tables and no autotune schema is not ours: refuse as well.
    """
    revision = current_revision(engine)
    if revision == HEAD:
        return False
    if revision is not None and revision not in REVISIONS:
        raise SchemaTooNewError(
            f"the database {where} was written by a newer autotune (schema revision {revision}, this one knows up to {HEAD}); "
            "upgrade autotune (pip install -U autotune) — the database was not changed"
        )
    if revision is None and engine.dialect.name == "sqlite":
        foreign = [t for t in inspect(engine).get_table_names() if not t.startswith("autotune_")]
        if foreign:
            raise NotAnAutotuneDatabaseError(
                f"{where} is not an autotune database (it holds other tables: {', '.join(sorted(foreign)[:5])}); "
                "choose another file with --db or AUTOTUNE_DB"
            )
    upgrade(engine)
    return True


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location())
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
