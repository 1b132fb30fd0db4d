"""Alembic migrations of the index schema."""
