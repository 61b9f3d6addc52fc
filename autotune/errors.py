"""The package's errors.

Every error a user can cause is an :class:`AutotuneError` whose message is one line: what is
wrong, the value given, and what to do. The CLI prints that line and exits with ``exit_code``.
"""

from __future__ import annotations


class AutotuneError(Exception):
    """Root of autotune's errors. ``str(err)`` is a one-line message for the user."""

    exit_code = 1


class InputError(AutotuneError):
    """Bad input from the user: an argument, a path, a config file."""

    exit_code = 2


class ModelNotFoundError(InputError):
    """A model that cannot be resolved, or that is not registered."""


class StoreError(AutotuneError):
    """The database cannot be opened, read or written."""

    exit_code = 2


class SchemaTooNewError(StoreError):
    """The database was written by a newer autotune; it is left untouched."""


class NotAnAutotuneDatabaseError(StoreError):
    """The file or database holds something other than an autotune store."""


class DependencyError(AutotuneError):
    """An optional package is needed for what was asked and is not installed."""

    exit_code = 2


def missing_dependency(package: str, purpose: str, install: str | None = None) -> DependencyError:
    """The error for an optional dependency that is not importable."""
    return DependencyError(f"{purpose} needs the package {package}, which is not installed (pip install {install or package})")
