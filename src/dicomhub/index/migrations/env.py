"""Alembic environment: runs on the connection dicomhub hands over.

dicomhub calls Alembic programmatically (see :mod:`dicomhub.index.engine`),
passing an open connection in ``config.attributes["connection"]``.

The revisions are frozen snapshots of the schema, so nothing here imports
:mod:`dicomhub.index.schema` (an import-linter contract keeps it so): running
them needs no metadata. Whoever autogenerates a new revision passes the live
``metadata`` in ``config.attributes["target_metadata"]``.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - always called from dicomhub
    raise RuntimeError("dicomhub migrations must be run through 'dicomhub db upgrade'")

context.configure(
    connection=connection,
    target_metadata=context.config.attributes.get("target_metadata"),
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
