"""Use cases: the only place where the index and the blob store meet."""
