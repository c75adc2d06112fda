"""The slow-body cap of :func:`lmcot.serving.edges.read_body`, without Ray or a web server.

Bodies are async iterators the test releases by hand, and :data:`~lmcot.serving.edges.SLOW_AFTER_S`
is shortened, so which body counts as slow is decided by the test, not by the machine's speed.
The full service under trickling clients is ``tests/stages/test_serve_hostile.py``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from lmcot.serving import edges

SLOW = 0.05
"""SLOW_AFTER_S in these tests: a body still arriving after 50 ms is slow."""


@pytest.fixture(autouse=True)
def quick_slow_threshold(monkeypatch):
    monkeypatch.setattr(edges, "SLOW_AFTER_S", SLOW)


class Trickle:
    """A body whose first part comes at once and whose rest comes when ``release`` is set."""

    def __init__(self):
        self.release = asyncio.Event()

    async def chunks(self):
        yield b"head-"
        await self.release.wait()
        yield b"tail"


async def whole():
    yield b"all at once"


def read(chunks, slow: edges.SlowReaders, timeout_s: float = 5.0) -> asyncio.Future:
    return asyncio.ensure_future(edges.read_body(chunks, max_bytes=1000, timeout_s=timeout_s, slow=slow))


async def turned_slow():
    await asyncio.sleep(3 * SLOW)


def test_at_most_limit_slow_bodies_are_received_at_once_and_fast_ones_pass_the_full_cap():
    async def main():
        slow = edges.SlowReaders(2)
        bodies = [Trickle(), Trickle()]
        readers = [read(b.chunks(), slow) for b in bodies]
        await turned_slow()
        assert slow.count == 2 and not any(r.done() for r in readers)
        # a third slow body is refused as soon as it turns slow, long before its own deadline
        start = time.monotonic()
        with pytest.raises(edges.BodyRefused) as refused:
            await read(Trickle().chunks(), slow, timeout_s=5)
        assert refused.value.status == 408 and "serve.max_slow_body_readers" in refused.value.message
        assert time.monotonic() - start < 4
        # a body that arrives at once is never counted, even with every slow place taken
        assert await read(whole(), slow) == b"all at once" and slow.count == 2
        # the slow ones, once complete, return their whole body and give their places back
        for b in bodies:
            b.release.set()
        assert [await r for r in readers] == [b"head-tail", b"head-tail"]
        assert slow.count == 0
        again = Trickle()
        reader = read(again.chunks(), slow)
        await turned_slow()
        assert slow.count == 1 and not reader.done(), "a freed place takes a new slow body"
        again.release.set()
        assert await reader == b"head-tail" and slow.count == 0

    asyncio.run(main())


def test_a_slow_body_gives_its_place_back_however_it_ends():
    """Timed out (408 ``serve.body_read_timeout_s``), its request cancelled, its transport broken: each
    time the place is free again, so slow clients that fail cannot lock the cap for good."""
    async def broken():
        yield b"head-"
        await asyncio.sleep(3 * SLOW)
        raise ConnectionResetError("the client went away")

    async def main():
        slow = edges.SlowReaders(1)
        with pytest.raises(edges.BodyRefused) as refused:
            await read(Trickle().chunks(), slow, timeout_s=4 * SLOW)
        assert refused.value.status == 408 and "serve.body_read_timeout_s" in refused.value.message
        assert slow.count == 0

        reader = read(Trickle().chunks(), slow)
        await turned_slow()
        assert slow.count == 1
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert slow.count == 0

        with pytest.raises(edges.ClientGone):
            await read(broken(), slow)
        assert slow.count == 0

        body = Trickle()
        reader = read(body.chunks(), slow)
        await turned_slow()
        body.release.set()
        assert await reader == b"head-tail", "after all that the one place still takes a slow body"

    asyncio.run(main())


def test_a_cap_of_zero_refuses_every_slow_body_and_no_fast_one():
    async def main():
        slow = edges.SlowReaders(0)
        with pytest.raises(edges.BodyRefused, match="max_slow_body_readers"):
            await read(Trickle().chunks(), slow)
        assert await read(whole(), slow) == b"all at once"
        assert slow.count == 0

    asyncio.run(main())
