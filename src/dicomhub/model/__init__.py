"""Pure domain model: identifiers, indexed attributes, records and queries (no I/O)."""
