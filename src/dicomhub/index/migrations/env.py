"""Alembic environment: runs on the connection dicomhub hands over.

dicomhub calls Alembic programmatically (see :mod:`dicomhub.index.engine`),
passing an open connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from dicomhub.index.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - always called from dicomhub
    raise RuntimeError("dicomhub migrations must be run through 'dicomhub db upgrade'")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
