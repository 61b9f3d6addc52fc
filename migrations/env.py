"""Alembic environment. The configuration is built in code by ``autotune.store.migrate``;
the connection to migrate arrives in ``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

from autotune.store.schema import VERSION_TABLE, Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
