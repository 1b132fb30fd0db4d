"""Python plugins: the interface (:mod:`~dicomhub.plugins.api`), the loader, and the
adapters that call them on ingest, on change log events, in routing and over HTTP."""
