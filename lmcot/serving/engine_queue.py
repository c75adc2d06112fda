"""A work queue that feeds a continuous-batching engine one decoding step at a time.

With ``generation.engine: continuous`` a model replica's generator carries a
:class:`~lmcot.models.continuous.ContinuousEngine`, and its :class:`EngineQueue` runs that engine on
the queue's one model thread (the engine is not thread safe: this thread alone submits, steps and
cancels). Free generation is not cut into pieces here: each prompt of a job becomes one engine
request, admitted as soon as a slot is free (the engine also holds it back while its token budget
is spent), advanced by every ``step`` together with every other running row, and answered the
moment its job's last prompt ends, so a short request waits for one decoding step of a long one,
not for a piece of it.

Fair admission between callers: the queue hands the engine one prompt at a time, only while the
engine has none waiting, and each time it picks the job with the fewest rows running (then the
oldest), so a caller that arrives while another's long job decodes gets the next free slot. Rows
are never preempted, so ``reserve_slots`` slots (by default one per 16 of the engine's, at least one)
are kept from long requests (over ``long_tokens`` new tokens): a short request starts at the next
step even while long ones fill the batch, and even past a long prompt that waits for room (a
prompt that does not fit holds the line for long prompts only; a short one passing it takes only the
reserved slots, so it cannot keep the long one waiting). The reserve comes on top of the engine's ``max_slots``
(the queue raises it by ``reserve_slots``), so long-only load still runs on as many rows as a
static batch of ``generation.batch_size``, and the bound costs a few rows of memory, not throughput. A
caller gone (its future cancelled) or past its ``timeout_s`` has its rows cancelled, which frees
their slots at the next step; its prompts not yet admitted are dropped. A request the engine fails
(a prefill that raises, an invalid setting) fails its own job only: the job's other rows are
cancelled, the neighbours' rows decode on.

Operations the engine does not run (``requests`` gives None for them: yes/no scores) go through
:class:`~lmcot.serving.work_queue.WorkQueue`'s batching on the same thread. The thread shares its time: after a static piece that took ``d`` seconds, the engine steps for up to ``d``
seconds before the next piece (or until it is idle), so a short generation beside static work
waits for about one piece, as it would in the static queue, not one piece per decoding step.
Left out: preempting running rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

from lmcot.serving.work_queue import QueueLimits, WorkQueue, _Job, _settle

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Stream:
    """A job whose prompts run as engine requests: ``requests[i]`` is item ``i``'s."""

    job: _Job
    requests: list
    live: dict = field(default_factory=dict)  # handle -> item index, for rows submitted and not ended
    rows: int = 0  # rows the job holds in the engine
    done: int = 0


class EngineQueue(WorkQueue):
    """A :class:`WorkQueue` whose jobs that ``requests(key, items)`` turns into engine requests run on
    ``engine`` step by step (see module docstring), each ended request giving its item ``result(handle)``
    (default: its generation); the other jobs run through ``run`` as before."""

    def __init__(self, run: Callable[[Hashable, list], Sequence], limits: QueueLimits, engine,
                 requests: Callable[[Hashable, Sequence], list | None], name: str = "lmcot-model", *,
                 long_tokens: int = 64, reserve_slots: int | None = None,
                 result: Callable[[object], object] = lambda handle: handle.generation):
        self.engine, self._requests, self._result = engine, requests, result
        self.long_tokens = long_tokens
        self.reserve_slots = max(1, engine.max_slots // 16) if reserve_slots is None else reserve_slots
        engine.max_slots += self.reserve_slots  # the reserve on top: long requests keep the batch size
        self._engine_turn = 0.0  # seconds of steps owed to the engine after the last static piece
        self._streams: list[_Stream] = []
        self._owner: dict[int, tuple[_Stream, int]] = {}  # id(handle) -> its stream and item index
        super().__init__(run, limits, name)
        self.counts.update({"steps": 0, "engine_requests": 0})

    def _accept(self, job: _Job) -> None:
        requests = self._requests(job.key, job.items)
        if requests is None:
            super()._accept(job)
        else:
            self._streams.append(_Stream(job, requests))

    # -- the model thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._ready:
                batch = self._plan()
            if batch:
                start = time.perf_counter()
                self._finish(batch, self._execute(batch))
                self._engine_turn = time.perf_counter() - start
                continue
            if not self.engine.idle:
                start = time.perf_counter()
                try:
                    ended = self.engine.step()
                except Exception as exc:  # noqa: BLE001 - the engine fails its rows itself; this is a last resort
                    log.exception("%s: a decoding step failed outside the engine's own handling", self.name)
                    with self._ready:  # the thread lives on: fail the jobs that had rows in that step
                        for stream in [s for s in self._streams if s.live]:
                            _settle(stream.job.future, error=exc)
                            self._drop(stream)
                    ended = []
                finally:
                    took = time.perf_counter() - start
                    self.busy_s += took
                    self._engine_turn -= took
                self.counts["steps"] += 1
                with self._ready:
                    for handle in ended:
                        self._ended(handle)

    def _plan(self) -> list:
        """Feed the engine, then return a static batch when one is waiting ([] when only the engine
        has work); waits while there is nothing to do (the caller holds the lock)."""
        while True:
            now = time.monotonic()
            self._expire_streams(now)
            self._feed()
            self._expire(now)
            if not self.engine.idle and self._engine_turn > 0:
                return []
            if any(not job.running for job in self._jobs):
                return self._next_batch()
            if not self.engine.idle:
                return []
            self._ready.wait()

    def _drop(self, stream: _Stream) -> None:
        """Cancel the stream's rows (their slots free at the next step) and forget it."""
        for handle in stream.live:
            self._owner.pop(id(handle), None)
            self.engine.cancel(handle)
        stream.live.clear()
        self._streams.remove(stream)

    def _expire_streams(self, now: float) -> None:
        for stream in list(self._streams):
            job = stream.job
            if job.future.cancelled():
                self.counts["dropped_items"] += len(job.items) - stream.done
                self._drop(stream)
            elif job.deadline is not None and now >= job.deadline:
                self._time_out(job, stream.done)
                self._drop(stream)

    def _feed(self) -> None:
        """Hand the engine prompts while it has free slots and none waiting, the job with the fewest
        rows running first (then the oldest). A long prompt that does not fit holds the line for the
        other long ones, not for short ones: those may still take the reserved slots."""
        engine = self.engine
        while not engine.queued:
            waiting = sorted((s for s in self._streams if s.job.next < len(s.job.items)),
                             key=lambda s: (s.rows, s.job.seq))
            long_rows = sum(s.rows for s in self._streams if self._long(s.requests[0]))
            blocked = False  # a long prompt is waiting for room
            for stream in waiting:
                request = stream.requests[stream.job.next]
                long = self._long(request)
                if blocked and long:
                    continue
                if self._fits(request.n, long, long_rows, blocked):
                    self._submit(stream)
                    break
                if not long:
                    return  # no room even for a short prompt
                blocked = True
            else:
                return

    def _long(self, request) -> bool:
        return request.max_new_tokens > self.long_tokens

    def _fits(self, n: int, long: bool, long_rows: int, blocked: bool) -> bool:
        """Whether ``n`` more rows may start: long rows stay out of the reserved slots; a short prompt
        passing a waiting long one only takes reserved slots (so it cannot keep the long one waiting)."""
        rows, slots = self.engine.running_rows, self.engine.max_slots
        if not rows:
            return True  # alone, even over the limits
        if blocked:
            return rows - long_rows + n <= self.reserve_slots and rows + n <= slots
        if long:
            return long_rows + n <= slots - self.reserve_slots and rows + n <= slots
        return rows + n <= slots

    def _submit(self, stream: _Stream) -> None:
        job, index = stream.job, stream.job.next
        request = stream.requests[index]
        handle = self.engine.submit(request)
        job.next += 1
        self.counts["engine_requests"] += 1
        stream.live[handle], stream.rows = index, stream.rows + request.n
        self._owner[id(handle)] = (stream, index)
        if handle.done:  # refused at submit (an invalid setting): fails its job now
            self._ended(handle)

    def _ended(self, handle) -> None:
        """A request the engine ended: its result goes to its job; a failure fails that job alone."""
        owner = self._owner.pop(id(handle), None)
        if owner is None:  # cancelled by the queue, or already reported
            return
        stream, index = owner
        job = stream.job
        stream.live.pop(handle, None)
        stream.rows -= handle.request.n
        if handle.state == "done":
            job.results[index] = self._result(handle)
            stream.done += 1
            self.counts["items"] += 1
            if stream.done == len(job.items):
                self.counts["jobs"] += 1
                _settle(job.future, job.results)
                self._streams.remove(stream)
            return
        if handle.state == "failed":
            self.counts["failed_jobs"] += 1
            log.warning("%s: request %s failed in the model: %s: %s", self.name, job.tag or "-",
                        type(handle.error).__name__, handle.error)
            _settle(job.future, error=handle.error)
            self._drop(stream)
