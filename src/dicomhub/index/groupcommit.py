"""Group commit: concurrent writers share one transaction and one fsync.

Every acknowledged store needs a committed index transaction, and with
``synchronous=FULL`` each commit waits for the disk. When several
associations store at once, the first writer to arrive leads: it takes every
job queued so far, runs them in one transaction, commits once and wakes the
followers. A lone writer leads its own batch of one, with no thread hand-off.

A batch first runs without savepoints: on PostgreSQL each SAVEPOINT and
RELEASE is a round trip to the server, made while every writer of the batch
waits. When a job of the batch fails, the whole transaction is rolled back and
the batch runs again with each job in its own savepoint, so that one job's
failure does not undo the others. Jobs must therefore be safe to run again
after a rollback: they only write through the connection they are given.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

from dicomhub.index import engine as engines

__all__ = ["GroupCommitter"]

T = TypeVar("T")

_MAX_BATCH = 64


class _Job(Generic[T]):
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[Connection], T]) -> None:
        self.fn = fn
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommitter:
    """Runs write jobs in shared transactions on ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cond = threading.Condition()
        self._queue: list[_Job[Any]] = []
        self._leading = False

    def run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` inside a write transaction; return once it is committed.

        Raises whatever ``fn`` raised (its savepoint is rolled back), or the
        commit's error.
        """
        (job,) = self._run_jobs([_Job(fn)])
        return self._outcome(job)

    def run_all(self, fns: Sequence[Callable[[Connection], T]]) -> list[T | BaseException]:
        """Run every job of ``fns`` in shared transactions; each gets its result or error."""
        jobs = self._run_jobs([_Job(fn) for fn in fns])
        return [job.error if job.error is not None else job.result for job in jobs]  # type: ignore[misc]

    def _run_jobs(self, jobs: list[_Job[T]]) -> list[_Job[T]]:
        with self._cond:
            self._queue.extend(jobs)
            while True:
                while self._leading and not all(j.done for j in jobs):
                    self._cond.wait()
                if all(j.done for j in jobs):
                    return jobs
                self._leading = True
                batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
                self._cond.release()
                try:
                    self._commit(batch)
                finally:
                    self._cond.acquire()
                    for j in batch:
                        j.done = True
                    self._leading = False
                    self._cond.notify_all()

    @staticmethod
    def _outcome(job: _Job[T]) -> T:
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _commit(self, batch: list[_Job[Any]]) -> None:
        if len(batch) > 1 and self._commit_together(batch):
            return
        try:
            with engines.write(self._engine) as conn:
                if len(batch) == 1:
                    self._run_one(conn, batch[0])
                else:
                    for job in batch:
                        savepoint = conn.begin_nested()
                        if self._run_one(conn, job):
                            savepoint.commit()
                        else:
                            savepoint.rollback()
                if len(batch) == 1 and batch[0].error is not None:
                    # Let the single job's exception roll the transaction back.
                    raise _Rollback
        except _Rollback:
            pass
        except BaseException as exc:
            for job in batch:
                if job.error is None:
                    job.error = exc

    def _commit_together(self, batch: list[_Job[Any]]) -> bool:
        """Run ``batch`` in one transaction without savepoints and commit it.

        Returns False, with nothing written and every job reset, when a job
        failed (the caller then runs the batch with savepoints). A failure of
        the commit itself is every job's error, as with savepoints.
        """
        try:
            with engines.write(self._engine) as conn:
                for job in batch:
                    if not self._run_one(conn, job):
                        raise _Rollback
        except _Rollback:
            for job in batch:
                job.result, job.error = None, None
            return False
        except BaseException as exc:
            if any(job.error is not None for job in batch):
                # A job's failure surfaced on leaving the transaction: the
                # savepoint path gives each job its own answer.
                for job in batch:
                    job.result, job.error = None, None
                return False
            for job in batch:
                job.error = exc
        return True

    @staticmethod
    def _run_one(conn: Connection, job: _Job[Any]) -> bool:
        try:
            job.result = job.fn(conn)
            return True
        except BaseException as exc:
            job.error = exc
            return False


class _Rollback(Exception):
    """Internal: abandon a one-job transaction whose job failed."""
