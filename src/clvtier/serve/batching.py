"""Micro-batching: concurrent scoring requests for the same date are scored in one call.

Scoring has a large fixed cost per call (running the SQL, the pipeline's column
handling) and a small cost per customer, so one call for ten single-customer
requests costs little more than one of them. Requests that arrive while a call
runs queue up; the next call takes everything queued (up to ``max_customers``
customers), groups it by ``(as_of, reasons)`` and scores each group at once.
Nothing waits on purpose: an idle service scores a request at once.

Calls run side by side (up to ``workers``) only while every running call is large
(``parallel_from`` customers or more): a small request then does not wait behind a
large batch. Next to small calls, a second call would only split the queue into two
calls that pay the fixed cost twice and share the same cores.

Scores do not depend on the batch a customer lands in: features are computed per
customer and the model scores rows independently.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import anyio
import pyarrow as pa

from clvtier.errors import InputError
from clvtier.serve.scoring import Scorer


class Overloaded(Exception):
    """More customers are waiting to be scored than the service accepts to queue."""


@dataclass
class _Job:
    customers: pa.StructArray
    as_of: dt.date
    reasons: bool
    done: asyncio.Future[list[dict[str, Any]]] = field(repr=False)


class MicroBatcher:
    """Score requests in calls on worker threads, merging the ones that queue up.

    Parameters
    ----------
    scorer : Scorer
    workers : int
        Most scoring calls running at the same time.
    max_customers : int
        Requests are merged up to this many customers (a larger request runs alone).
    max_queued : int
        Customers allowed to wait; a request that would exceed it is refused with
        :class:`Overloaded` at once, rather than answered late.
    parallel_from : int
        A call starts next to running ones only if each of them has at least this
        many customers.
    """

    def __init__(self, scorer: Scorer, workers: int = 2, max_customers: int = 1000,
                 max_queued: int = 50_000, parallel_from: int = 500) -> None:
        self.scorer = scorer
        self.workers = workers
        self.max_customers = max_customers
        self.max_queued = max_queued
        self.parallel_from = parallel_from
        self._queued = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._running: dict[int, int] = {}  # call number -> customers
        self._changed: asyncio.Condition | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._tasks = {asyncio.create_task(self._dispatch(), name="scoring-dispatch")}

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = set()

    async def score(self, customers: pa.StructArray, as_of: dt.date, reasons: bool) -> list[dict[str, Any]]:
        """Scores of ``customers`` (a :class:`~clvtier.serve.schemas.ScoreBatch`'s) at ``as_of``, in order,
        computed with whatever else is queued."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        if self._queued and self._queued + len(customers) > self.max_queued:
            raise Overloaded(f"{self._queued:,} customers are already waiting to be scored.")
        job = _Job(customers, as_of, reasons, asyncio.get_running_loop().create_future())
        self._queued += len(customers)
        self._queue.put_nowait(job)
        return await job.done

    def _may_start(self) -> bool:
        return len(self._running) < self.workers and all(n >= self.parallel_from for n in self._running.values())

    async def _dispatch(self) -> None:
        """Take queued requests into calls, one call at a time unless every running call is large."""
        assert self._queue is not None and self._changed is not None
        calls = 0
        while True:
            first = await self._queue.get()
            async with self._changed:
                await self._changed.wait_for(self._may_start)
            jobs = [first]
            n = len(first.customers)
            while n < self.max_customers and not self._queue.empty():
                nxt = self._queue.get_nowait()
                jobs.append(nxt)
                n += len(nxt.customers)
            self._queued -= n
            calls += 1
            self._running[calls] = n
            task = asyncio.create_task(self._call(calls, jobs), name=f"scoring-{calls}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, number: int, jobs: list[_Job]) -> None:
        """Score ``jobs`` (grouped by date and reasons) and answer each caller."""
        assert self._changed is not None
        try:
            groups: dict[tuple[dt.date, bool], list[_Job]] = {}
            for job in jobs:
                groups.setdefault((job.as_of, job.reasons), []).append(job)
            for (as_of, reasons), group in groups.items():
                live = [j for j in group if not j.done.done()]  # a cancelled caller needs no score
                if not live:
                    continue
                try:
                    results = await anyio.to_thread.run_sync(self._score, live, as_of, reasons)
                except Exception as exc:  # delivered to every caller in the group
                    results = [exc for _ in live]
                for job, result in zip(live, results, strict=True):
                    if job.done.done():
                        continue
                    if isinstance(result, BaseException):
                        job.done.set_exception(result)
                    else:
                        job.done.set_result(result)
        finally:
            async with self._changed:
                del self._running[number]
                self._changed.notify_all()

    def _score(self, jobs: list[_Job], as_of: dt.date,
               reasons: bool) -> list[list[dict[str, Any]] | Exception]:
        customers = pa.concat_arrays([job.customers for job in jobs])
        scores = self.scorer.score(customers, as_of, with_reasons=reasons)
        out: list[list[dict[str, Any]] | Exception] = []
        start = 0
        for job in jobs:
            mine = scores[start:start + len(job.customers)]
            start += len(job.customers)
            unscored = [i for i, s in enumerate(mine) if s is None]
            if unscored:  # only this request fails
                out.append(InputError(
                    f"customers {unscored[:10]} cannot be scored: their records give features the model "
                    "cannot take (values too large to be finite).",
                    "Check those customers' transaction amounts.",
                ))
            else:
                out.append([s for s in mine if s is not None])
        return out
