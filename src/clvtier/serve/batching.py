"""Micro-batching: concurrent scoring requests for the same date are scored in one call.

Scoring has a large fixed cost per call (the SQL plan, the pipeline's column
handling) and a small cost per customer, so one call for ten single-customer
requests costs little more than one of them. Requests that arrive while the
workers are busy queue up; a free worker takes everything queued (up to
``max_customers`` customers), groups it by ``(as_of, reasons)`` and scores each
group at once. Nothing waits on purpose: an idle service scores a request at once.

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

from clvtier.errors import InputError
from clvtier.serve.schemas import Customer
from clvtier.serve.scoring import Scorer


class Overloaded(Exception):
    """More customers are waiting to be scored than the service accepts to queue."""


@dataclass
class _Job:
    customers: list[Customer]
    as_of: dt.date
    reasons: bool
    done: asyncio.Future[list[dict[str, Any]]] = field(repr=False)


class MicroBatcher:
    """Score requests through ``workers`` threads, merging the ones that queue up.

    Parameters
    ----------
    scorer : Scorer
    workers : int
        Scoring calls running at the same time.
    max_customers : int
        Requests are merged up to this many customers (a larger request runs alone).
    max_queued : int
        Customers allowed to wait; a request that would exceed it is refused with
        :class:`Overloaded` at once, rather than answered late.
    """

    def __init__(self, scorer: Scorer, workers: int = 2, max_customers: int = 1000,
                 max_queued: int = 50_000) -> None:
        self.scorer = scorer
        self.workers = workers
        self.max_customers = max_customers
        self.max_queued = max_queued
        self._queued = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._limiter = anyio.CapacityLimiter(workers)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._work(), name=f"scoring-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def score(self, customers: list[Customer], as_of: dt.date, reasons: bool) -> list[dict[str, Any]]:
        """Scores of ``customers`` at ``as_of``, in order, computed with whatever else is queued."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        if self._queued and self._queued + len(customers) > self.max_queued:
            raise Overloaded(f"{self._queued:,} customers are already waiting to be scored.")
        job = _Job(customers, as_of, reasons, asyncio.get_running_loop().create_future())
        self._queued += len(customers)
        self._queue.put_nowait(job)
        return await job.done

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            jobs = [await self._queue.get()]
            n = len(jobs[0].customers)
            while n < self.max_customers and not self._queue.empty():
                nxt = self._queue.get_nowait()
                jobs.append(nxt)
                n += len(nxt.customers)
            self._queued -= n
            groups: dict[tuple[dt.date, bool], list[_Job]] = {}
            for job in jobs:
                groups.setdefault((job.as_of, job.reasons), []).append(job)
            for (as_of, reasons), group in groups.items():
                live = [j for j in group if not j.done.done()]  # a cancelled caller needs no score
                if not live:
                    continue
                try:
                    results = await anyio.to_thread.run_sync(self._score, live, as_of, reasons,
                                                             limiter=self._limiter)
                except Exception as exc:  # delivered to every caller in the group
                    results = [exc for _ in live]
                for job, result in zip(live, results, strict=True):
                    if job.done.done():
                        continue
                    if isinstance(result, BaseException):
                        job.done.set_exception(result)
                    else:
                        job.done.set_result(result)

    def _score(self, jobs: list[_Job], as_of: dt.date,
               reasons: bool) -> list[list[dict[str, Any]] | Exception]:
        customers = [c for job in jobs for c in job.customers]
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
                    "cannot take (for example the spend share of a total that cancels out to almost zero).",
                    "Check those customers' transaction amounts.",
                ))
            else:
                out.append([s for s in mine if s is not None])
        return out
