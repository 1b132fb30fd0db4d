#!/usr/bin/env bash
# The test suite on both back ends side by side: the whole suite on SQLite + file
# storage, and the end-to-end suite again on PostgreSQL + S3 (leaving out the tests
# marked backend_neutral, whose subject does not depend on the index or blob store).
#
# Most of a test's wall time is spent waiting on the processes it drives (dicomhub
# serve, DCMTK, PostgreSQL, the S3 server), so two pytest sessions on two cores take
# about as long as the longer one alone, not the sum. The SQLite run prints as it
# goes; the PostgreSQL + S3 run writes to a log that is printed when it ends. Each
# run has its own --basetemp so neither cleans up the other's folders.
#
# Usage: scripts/run-tests.sh PYTHON [PYTEST_ARGS...]
set -uo pipefail
python=${1:?usage: run-tests.sh PYTHON [PYTEST_ARGS...]}
shift
work=$(mktemp -d -t dicomhub-tests-XXXXXX)
pg_log="$work/postgres-s3.log"

DICOMHUB_TEST_BACKEND=postgres-s3 "$python" -m pytest -p no:cacheprovider \
  --basetemp="$work/postgres-s3" --durations=30 "$@" -m "not backend_neutral" tests/e2e >"$pg_log" 2>&1 &
pg_pid=$!
# A test run stopped by CI or ^C stops the other one too.
trap 'kill "$pg_pid" 2>/dev/null' INT TERM EXIT

DICOMHUB_TEST_BACKEND=sqlite-file "$python" -m pytest --basetemp="$work/sqlite-file" --durations=30 "$@"
sqlite_rc=$?

wait "$pg_pid"
pg_rc=$?
trap - INT TERM EXIT
echo
echo "sqlite-file: exit $sqlite_rc; postgres-s3: exit $pg_rc (its log follows)"
echo "==================== PostgreSQL + S3 (tests/e2e, not backend_neutral) ===================="
cat "$pg_log"
# Passed tests' folders are removed as each test ends (tmp_path_retention_policy);
# what is left (failed tests, module fixtures) goes now: the disk may be shared.
rm -rf "$work"
[ "$sqlite_rc" -eq 0 ] && [ "$pg_rc" -eq 0 ]
