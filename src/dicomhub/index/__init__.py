"""The Patient > Study > Series > Instance index (SQLAlchemy 2 Core)."""
