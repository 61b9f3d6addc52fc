"""autotune: find the fastest way to load and run a Transformers model on your own GPUs.

The package is layered so that every layer only points down:

- ``errors``, ``units``: the bottom.
- ``workload``, ``candidate``: value objects in the user's words, and the validity rules.
- ``environment`` (NVML probe, versions, fingerprint), ``registry`` (model configs),
  ``store`` (SQLAlchemy + Alembic): the middle.
- ``cli``: on top; nothing imports it.

torch and transformers are imported only where models are built or measured.
"""

from __future__ import annotations

__version__ = "0.1.0"

from autotune.errors import AutotuneError

__all__ = ["AutotuneError", "__version__"]
