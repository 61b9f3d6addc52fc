"""Alembic migrations of autotune's store (shipped in the wheel as ``autotune.migrations``)."""
