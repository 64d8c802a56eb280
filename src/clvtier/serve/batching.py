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
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import anyio

from clvtier.serve.schemas import Customer
from clvtier.serve.scoring import Scorer


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
    """

    def __init__(self, scorer: Scorer, workers: int = 2, max_customers: int = 1000) -> None:
        self.scorer = scorer
        self.workers = workers
        self.max_customers = max_customers
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
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []

    async def score(self, customers: list[Customer], as_of: dt.date, reasons: bool) -> list[dict[str, Any]]:
        """Scores of ``customers`` at ``as_of``, in order, computed with whatever else is queued."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        job = _Job(customers, as_of, reasons, asyncio.get_running_loop().create_future())
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
            groups: dict[tuple[dt.date, bool], list[_Job]] = {}
            for job in jobs:
                groups.setdefault((job.as_of, job.reasons), []).append(job)
            for (as_of, reasons), group in groups.items():
                live = [j for j in group if not j.done.done()]  # a cancelled caller needs no score
                if not live:
                    continue
                try:
                    scores = await anyio.to_thread.run_sync(self._score, live, as_of, reasons,
                                                            limiter=self._limiter)
                except Exception as exc:  # delivered to every caller in the group
                    for job in live:
                        if not job.done.done():
                            job.done.set_exception(exc)
                    continue
                for job, result in zip(live, scores, strict=True):
                    if not job.done.done():
                        job.done.set_result(result)

    def _score(self, jobs: list[_Job], as_of: dt.date, reasons: bool) -> list[list[dict[str, Any]]]:
        customers = [c for job in jobs for c in job.customers]
        scores = self.scorer.score(customers, as_of, with_reasons=reasons)
        out, start = [], 0
        for job in jobs:
            out.append(scores[start:start + len(job.customers)])
            start += len(job.customers)
        return out
