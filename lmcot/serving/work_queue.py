"""One work queue per model: calls from many callers merged into model batches, each answered in bounded time.

Why one queue: a large LM is expensive per call and cheap per extra row, so calls that arrive
together (Serve requests, the reward calls of several training workers) should share a forward
pass; but one caller's long or broken work must not cost the others their answers. Every
operation (generation, logprobs, yes/no scores) and every caller (Serve replicas, the refinement
judge actors) goes through this one queue, which has no Ray in it, so it is tested in milliseconds.
Left out: Serve's ``@serve.batch``, which merges calls of one method only and cannot split a long
request into pieces. With a continuous-batching engine (``generation.engine: continuous``),
:class:`~lmcot.serving.engine_queue.EngineQueue` runs generation step by step instead of in pieces.

How it works. A caller submits a *job*: a key (the operation and its decoding settings: only jobs
with equal keys can share a model call) and a list of items (prompts). One thread runs the model.
When it is free it picks a head job, takes as many of its next items as one batch allows
(``max_rows`` rows, ``max_cost`` rows x new tokens), and fills the rest of the batch with the next
items of other waiting jobs of the same key (oldest first, at most ``max_callers`` jobs). A job
with more items than one batch holds goes back into the queue after each piece, so a long request
never holds the model for more than one batch at a time.

Bounded wait. The head job is the one with the least ``aging_s x piece cost / max_cost - seconds
waited``: a full-size piece concedes ``aging_s`` seconds to a tiny one, and no more. So a short
request waits for about one batch of a long one, and a piece that has waited ``aging_s`` seconds
goes before every piece that arrived after it, whatever their costs: a piece's wait is at most
``aging_s`` plus the work queued ahead of it when it arrived (first come, first served from there
on). A large request is therefore answered after its pieces, each waiting at most that long. Left
out: a priority of cost / (1 + seconds waited), under which a 2,048-token piece loses to a stream
of fresh 6-token pieces for minutes.

Failures stay with their caller. A merged batch that raises is run again caller by caller, so only
the jobs whose own items fail get the exception. A job whose caller gave up (its future cancelled:
timeout, disconnect) or whose ``timeout_s`` passed while it waited is removed before its next
piece runs, and the others' pieces still run. Every failure is logged with the job's ``tag`` (the
request id), so an error body's id leads to the line that explains it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueLimits:
    """Batch size and fairness of one model's queue."""

    max_rows: int
    """Most rows (items x rows per item) in one model call: the generator's batch size."""
    max_cost: int
    """Most rows x new tokens in one model call; a longer job is served in pieces of this size."""
    max_callers: int = 64
    """Most jobs merged into one model call."""
    gather_s: float = 0.0
    """How long an idle model waits for more callers before it runs a batch (under load, jobs queue
    while a batch runs and the next one fills without waiting)."""
    aging_s: float = 2.0
    """Seconds a full-size piece concedes to a tiny one; past them it goes first (the wait bound)."""

    def __post_init__(self):
        for name in ("max_rows", "max_cost", "max_callers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gather_s < 0 or self.aging_s < 0:
            raise ValueError(f"gather_s and aging_s must be >= 0, got {self.gather_s}, {self.aging_s}")


@dataclass(eq=False)
class _Job:
    key: Hashable
    items: list
    rows: int
    tokens: int
    future: cf.Future
    deadline: float | None
    tag: str
    seq: int
    since: float
    results: list = field(default_factory=list)
    next: int = 0
    running: bool = False

    def fit(self, rows_left: int, cost_left: int) -> int:
        """Items of this job that fit in what is left of a batch."""
        per_item = self.rows * self.tokens
        return max(0, min(len(self.items) - self.next, rows_left // self.rows, cost_left // max(1, per_item)))


def _settle(future: cf.Future, result=None, error: BaseException | None = None) -> None:
    try:
        future.set_exception(error) if error is not None else future.set_result(result)
    except cf.InvalidStateError:  # the caller gave up meanwhile
        pass


class WorkQueue:
    """Merges callers' jobs into model calls of ``run(key, items) -> results`` on one thread (see module docstring)."""

    def __init__(self, run: Callable[[Hashable, list], Sequence], limits: QueueLimits, name: str = "lmcot-model"):
        self._run, self.limits, self.name = run, limits, name
        self._jobs: list[_Job] = []
        self._seq = itertools.count()
        self._ready = threading.Condition()
        self.counts = {"batches": 0, "merged_batches": 0, "jobs": 0, "items": 0, "dropped_items": 0,
                       "expired_jobs": 0, "failed_jobs": 0}
        self.busy_s = 0.0
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    # -- callers ------------------------------------------------------------------------------
    def submit(self, key: Hashable, items: Sequence, *, rows: int = 1, tokens: int = 1,
               timeout_s: float | None = None, tag: str = "") -> cf.Future:
        """Queue ``items`` (each ``rows`` rows of ``tokens`` new tokens); the future gets their results in order.

        Cancel the future to give up: the job's remaining pieces are dropped.
        """
        future: cf.Future = cf.Future()
        if not items:
            future.set_result([])
            return future
        now = time.monotonic()
        job = _Job(key, list(items), max(1, rows), max(1, tokens), future,
                   None if timeout_s is None else now + timeout_s, tag, next(self._seq), now, [None] * len(items))
        future.add_done_callback(self._wake_if_cancelled)
        with self._ready:
            self._accept(job)
            self._ready.notify()
        return future

    def _accept(self, job: _Job) -> None:
        """Queue a new job (the caller holds the lock)."""
        self._jobs.append(job)

    async def run(self, key: Hashable, items: Sequence, **kwargs) -> list:
        """:meth:`submit` from a coroutine; cancelling the coroutine cancels the job."""
        return await asyncio.wrap_future(self.submit(key, items, **kwargs))

    def call(self, key: Hashable, items: Sequence, **kwargs) -> list:
        """:meth:`submit` from a thread, waiting for the results."""
        return self.submit(key, items, **kwargs).result()

    def stats(self) -> dict:
        """Model calls run (``merged_batches``: those serving more than one job), jobs and items served,
        items dropped (callers gone), jobs expired in the queue or failed, seconds in the model."""
        return {**self.counts, "busy_seconds": round(self.busy_s, 3)}

    # -- the model thread ---------------------------------------------------------------------
    def _wake_if_cancelled(self, future: cf.Future) -> None:
        if future.cancelled():
            with self._ready:
                self._ready.notify()

    def _expire(self, now: float) -> None:
        """Remove jobs whose caller gave up, and fail waiting jobs past their timeout."""
        keep = []
        for job in self._jobs:
            if job.running:
                keep.append(job)
            elif job.future.cancelled():
                self.counts["dropped_items"] += len(job.items) - job.next
            elif job.deadline is not None and now >= job.deadline:
                self._time_out(job, job.next)
            else:
                keep.append(job)
        self._jobs = keep

    def _time_out(self, job: _Job, done: int) -> None:
        """Fail ``job`` for its timeout, ``done`` of its items served."""
        self.counts["expired_jobs"] += 1
        log.warning("%s: request %s timed out in the model queue after %d of %d items", self.name,
                    job.tag or "-", done, len(job.items))
        _settle(job.future, error=TimeoutError(f"the model queue did not finish this request within its "
                                               f"timeout ({done} of {len(job.items)} prompts done)"))

    def _next_batch(self) -> list[tuple[_Job, int, int]]:
        """Wait for work, then pick the head job and fill its batch (the caller holds the lock)."""
        lim = self.limits
        while True:
            now = time.monotonic()
            self._expire(now)
            ready = [j for j in self._jobs if not j.running]
            if not ready:
                self._ready.wait()
                continue
            idle_for = now - min(j.since for j in ready)
            fresh = all(j.next == 0 for j in ready)  # a job between its pieces never waits to gather
            if fresh and idle_for < lim.gather_s and len(ready) < lim.max_callers:
                self._ready.wait(lim.gather_s - idle_for)  # let other callers' jobs arrive
                continue
            break

        def score(job: _Job) -> tuple:
            piece = max(1, job.fit(lim.max_rows, lim.max_cost)) * job.rows * job.tokens
            return (lim.aging_s * min(1.0, piece / lim.max_cost) - (now - job.since), job.seq)

        head = min(ready, key=score)
        take = max(1, head.fit(lim.max_rows, lim.max_cost))
        batch = [(head, head.next, head.next + take)]
        rows, cost = take * head.rows, take * head.rows * head.tokens
        for job in sorted((j for j in ready if j is not head and j.key == head.key), key=lambda j: (j.since, j.seq)):
            if len(batch) >= lim.max_callers:
                break
            take = job.fit(lim.max_rows - rows, lim.max_cost - cost)
            if take:
                batch.append((job, job.next, job.next + take))
                rows, cost = rows + take * job.rows, cost + take * job.rows * job.tokens
        for job, _, stop in batch:
            job.running, job.next = True, stop
        return batch

    def _call(self, key, items: list) -> list:
        start = time.perf_counter()
        try:
            out = list(self._run(key, items))
        finally:
            self.busy_s += time.perf_counter() - start
        if len(out) != len(items):
            raise RuntimeError(f"the model returned {len(out)} results for {len(items)} items")
        return out

    def _execute(self, batch: list[tuple[_Job, int, int]]) -> dict[int, BaseException]:
        """Run one batch; returns the failures by job seq (a merged batch that fails is retried job by job)."""
        key = batch[0][0].key
        failures: dict[int, BaseException] = {}
        parts = [(job, a, b) for job, a, b in batch if not job.future.cancelled()]
        self.counts["dropped_items"] += sum(b - a for job, a, b in batch if job.future.cancelled())
        if not parts:
            return failures
        try:
            out = self._call(key, [x for job, a, b in parts for x in job.items[a:b]])
            self.counts["batches"] += 1
            self.counts["merged_batches"] += len(parts) > 1
        except Exception as exc:  # noqa: BLE001 - handed to the job(s) that caused it
            if len(parts) == 1:
                failures[parts[0][0].seq] = exc
                return failures
            out = []
            for job, a, b in parts:  # caller by caller: only the one whose items fail gets the error
                try:
                    own = self._call(key, job.items[a:b])
                    self.counts["batches"] += 1
                except Exception as own_exc:  # noqa: BLE001
                    failures[job.seq] = own_exc
                    own = [None] * (b - a)
                out += own
        pos = 0
        for job, a, b in parts:
            job.results[a:b] = out[pos:pos + b - a]
            pos += b - a
        self.counts["items"] += pos
        return failures

    def _loop(self) -> None:
        while True:
            with self._ready:
                batch = self._next_batch()
            self._finish(batch, self._execute(batch))

    def _finish(self, batch: list[tuple[_Job, int, int]], failures: dict[int, BaseException]) -> None:
        """Answer the jobs of a batch that ran: failed, complete, or back in the queue for their next piece."""
        with self._ready:
            now = time.monotonic()
            for job, _, _ in batch:
                job.running, job.since = False, now
                error = failures.get(job.seq)
                if error is not None:
                    self.counts["failed_jobs"] += 1
                    log.warning("%s: request %s failed in the model: %s: %s", self.name, job.tag or "-",
                                type(error).__name__, error)
                    _settle(job.future, error=error)
                elif job.next < len(job.items):
                    continue
                else:
                    self.counts["jobs"] += 1
                    _settle(job.future, job.results)
                self._jobs.remove(job)
