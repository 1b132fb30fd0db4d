"""What operators watch: structured logs, Prometheus metrics and the syslog audit feed.

Infrastructure under every other layer: it knows no DICOM and no archive
(an import-linter contract keeps it so), only log records, counters and
octets. ``context`` holds the request and association ids, ``logs`` the
formatters, ``metrics`` the Prometheus families (multiprocess) and ``syslog``
the RFC 5424 sender.
"""
