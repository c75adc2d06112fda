"""A model replica's work: one thread, chunks of one model batch, fair turns, one failure per caller.

Serve's ``@serve.batch`` merges concurrent callers' :class:`GenerateCall` s into one list;
:func:`generate_batch` runs it on the replica's :class:`ModelWorker` in chunks, so a short
request waits for about one chunk of a long one, a chunk that fails is retried caller by
caller, and the chunks of a caller who gave up (:func:`call_batched` marks its
:class:`Ticket`) are dropped. Plain asyncio and one thread: no Ray here, so it is tested
without a cluster.
"""

import asyncio
import functools
import threading
import time
from dataclasses import dataclass

from lmcot.models.generation import Generation


# -- calls between deployments ---------------------------------------------------------------
@dataclass(frozen=True)
class GenerateCall:
    """One caller's prompts and decoding settings; calls with equal settings share a model call."""

    prompts: tuple[str, ...]
    max_new_tokens: int
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0

    def settings(self) -> tuple:
        return (self.max_new_tokens, self.n, self.temperature, self.top_p)


@dataclass
class Ticket:
    """A call inside a model replica; ``cancelled`` is set when its caller gave up (timeout, disconnect)."""

    call: GenerateCall
    cancelled: bool = False


@dataclass
class _Job:
    cost: int
    since: float
    fn: object
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future, ok: bool, out) -> None:
    if not future.cancelled():
        future.set_result(out) if ok else future.set_exception(out)


class ModelWorker:
    """A replica's model and the one thread that runs it, one chunk of work at a time.

    Work is handed over in chunks of at most ``chunk_rows`` rows and ``chunk_tokens`` rows x
    new tokens (:meth:`prompts_per_chunk`), so a long request queues one chunk at a time.
    When the thread is free it takes the waiting chunk with the least cost (rows x new
    tokens) per second waited, plus one: a short request that arrives while long ones run
    waits for about one chunk, and a long chunk's turn still comes as it ages. A chunk whose
    caller was cancelled before its turn is dropped.
    """

    def __init__(self, generator, chunk_rows: int, chunk_tokens: int):
        self.generator = generator
        self.chunk_rows = chunk_rows
        """Most rows (prompts x samples) per chunk: one batch of the generator (``generation.batch_size``)."""
        self.chunk_tokens = chunk_tokens
        """Most rows x new tokens per chunk (``serve.max_chunk_tokens``)."""
        self.done = 0
        """Chunks run."""
        self.dropped = 0
        """Chunks never run because their caller was cancelled."""
        self._pending: list[_Job] = []
        self._ready = threading.Condition()
        threading.Thread(target=self._loop, name="lmcot-model", daemon=True).start()

    def prompts_per_chunk(self, n: int, max_new_tokens: int) -> int:
        """Prompts of ``n`` samples each that one chunk holds (at least one).

        >>> w = ModelWorker(None, chunk_rows=16, chunk_tokens=2048)
        >>> w.prompts_per_chunk(1, 8), w.prompts_per_chunk(4, 256), w.prompts_per_chunk(8, 4096)
        (16, 2, 1)
        """
        rows = min(self.chunk_rows, self.chunk_tokens // max(1, max_new_tokens))
        return max(1, rows // max(1, n))

    async def run(self, cost: int, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on the model thread when its turn comes; ``cost``: rows x new tokens."""
        loop = asyncio.get_running_loop()
        job = _Job(cost, time.monotonic(), functools.partial(fn, *args, **kwargs), loop.create_future(), loop)
        with self._ready:
            self._pending.append(job)
            self._ready.notify()
        return await job.future

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                now = time.monotonic()
                job = min(self._pending, key=lambda j: j.cost / (1.0 + now - j.since))  # ties: first come
                self._pending.remove(job)
            if job.future.cancelled():
                self.dropped += 1
                continue
            try:
                out, ok = job.fn(), True
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                out, ok = exc, False
            self.done += 1
            job.loop.call_soon_threadsafe(_settle, job.future, ok, out)

    def stats(self) -> dict:
        return {"chunks_done": self.done, "chunks_dropped": self.dropped}


async def generate_batch(worker: ModelWorker, tickets: list[Ticket]) -> list:
    """Run a ``@serve.batch`` of calls: per decoding setting, in chunks (:meth:`ModelWorker.prompts_per_chunk`).

    Returns, per ticket, its generations, or the exception that failed it. A chunk that
    fails is retried caller by caller, so one request the model cannot serve fails alone
    and the requests merged with it still get their answers. Smaller calls go first within
    a setting, and chunks of cancelled calls are skipped.
    """
    results: list = [[None] * len(t.call.prompts) for t in tickets]
    failed: dict[int, BaseException] = {}
    groups: dict[tuple, list[int]] = {}
    for i, ticket in enumerate(tickets):
        groups.setdefault(ticket.call.settings(), []).append(i)
    for (max_new_tokens, n, temperature, top_p), members in groups.items():
        members.sort(key=lambda i: len(tickets[i].call.prompts))
        items = [(i, j) for i in members for j in range(len(tickets[i].call.prompts))]
        size = worker.prompts_per_chunk(n, max_new_tokens)

        async def run(chunk: list[tuple[int, int]]) -> None:
            prompts = [tickets[i].call.prompts[j] for i, j in chunk]
            outs = await worker.run(len(prompts) * n * max_new_tokens, worker.generator.generate, prompts,
                                    max_new_tokens=max_new_tokens, n=n,
                                    temperature=temperature, top_p=top_p)
            for (i, j), out in zip(chunk, outs):
                results[i][j] = out

        for start in range(0, len(items), size):
            chunk = [(i, j) for i, j in items[start:start + size] if i not in failed and not tickets[i].cancelled]
            if not chunk:
                worker.dropped += any(tickets[i].cancelled for i, _ in items[start:start + size])
                continue
            try:
                await run(chunk)
            except Exception as exc:  # noqa: BLE001 - isolate the caller that caused it
                owners = sorted({i for i, _ in chunk})
                if len(owners) == 1:
                    failed[owners[0]] = exc
                    continue
                for owner in owners:
                    try:
                        await run([(i, j) for i, j in chunk if i == owner])
                    except Exception as own:  # noqa: BLE001
                        failed[owner] = own
    for i, ticket in enumerate(tickets):
        if ticket.cancelled and i not in failed:
            failed[i] = asyncio.CancelledError()
    return [failed.get(i, out) for i, out in enumerate(results)]


async def call_batched(batched_method, call: GenerateCall) -> list[Generation]:
    """One call through a ``@serve.batch`` method of tickets: marks it cancelled if its caller gives up."""
    ticket = Ticket(call)
    try:
        out = await batched_method(ticket)
    except asyncio.CancelledError:
        ticket.cancelled = True
        raise
    if isinstance(out, BaseException):
        raise out
    return out
