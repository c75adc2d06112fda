"""Rules for the hostile edge of an HTTP service: request ids, header bytes, echoed text, slow bodies.

Kept free of Ray and of any web framework so each rule is tested on its own; the ingress's app
(:mod:`lmcot.serving.api`) and the proxy middleware (:mod:`lmcot.serving.proxy`) apply them.

- *Request ids.* A client may choose its request id (``X-Request-ID``), but only a short printable
  ASCII one; any other is replaced by a fresh id before anything reads it, so the id in the error
  body, the response header and the log lines is always the same string.
- *Header bytes.* HTTP allows any byte 0x80-0xFF in a header value; a value that is not UTF-8 is
  dropped before the application server decodes it (it would raise there), so it is ignored, never
  a 500.
- *Echoed text.* Text a client sent (a model id, a path) is echoed in messages only printable and
  cut short.
- *Slow bodies.* A body must arrive within a deadline, and only a few requests at once may take
  longer than :data:`SLOW_AFTER_S` to send theirs, so clients trickling bytes cannot hold every
  request slot of the ingress. A body that stops arriving because the transport failed (the client
  went away: Starlette's ``ClientDisconnect``, or under Serve the proxy's cancelled receive task) is
  :class:`ClientGone`, not a server error; one that fails after its reader gave up fails quietly.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import AsyncIterator

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID = 128
"""Longest client-chosen request id kept."""
SLOW_AFTER_S = 0.5
"""A body still arriving after this many seconds counts against ``serve.max_slow_body_readers``."""


def valid_request_id(value: bytes) -> bool:
    """A client's request id is kept if it is 1-128 printable ASCII characters.

    >>> valid_request_id(b"client-42"), valid_request_id(b"\\xff\\xfe"), valid_request_id(b"a" * 129)
    (True, False, False)
    """
    return 0 < len(value) <= MAX_REQUEST_ID and all(0x21 <= b <= 0x7E for b in value)


def clean_headers(headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], str]:
    """ASGI headers with non-UTF-8 values dropped and one valid request id; returns them and the id.

    >>> clean_headers([(b"x-request-id", b"\\xff"), (b"accept", b"\\xe9t\\xe9"), (b"host", b"h")])[0][:1]
    [(b'host', b'h')]
    >>> clean_headers([(b"x-request-id", b"abc")])
    ([(b'x-request-id', b'abc')], 'abc')
    """
    kept, rid = [], ""
    for name, value in headers:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if name.lower() == REQUEST_ID_HEADER:
            if rid or not valid_request_id(value):
                continue
            rid = value.decode()
        kept.append((name, value))
    if not rid:
        rid = uuid.uuid4().hex
        kept.append((REQUEST_ID_HEADER, rid.encode()))
    return kept, rid


def printable(text: str, limit: int = 80) -> str:
    """``text`` safe to echo in a message: control characters as ``?``, at most ``limit`` characters.

    >>> printable("gpt-4\\x1b[31m\\n"), printable("x" * 10, limit=4)
    ('gpt-4?[31m?', 'xxxx...')
    """
    clean = "".join(c if c.isprintable() else "?" for c in str(text))
    return clean if len(clean) <= limit else clean[:limit] + "..."


class BodyRefused(Exception):
    """A request body refused at the edge: ``status`` 413 (too large) or 408 (too slow)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class ClientGone(Exception):
    """The body stopped arriving: the client, or the proxy in front of it, went away."""


class SlowReaders:
    """How many requests of one ingress are still receiving a body after :data:`SLOW_AFTER_S`."""

    def __init__(self, limit: int):
        self.limit, self.count = limit, 0


async def read_body(chunks: AsyncIterator[bytes], *, max_bytes: int, timeout_s: float, slow: SlowReaders,
                    declared: str = "") -> bytes:
    """The whole body, or :class:`BodyRefused`: over ``max_bytes`` (declared or streamed), not all
    there within ``timeout_s``, or still arriving after :data:`SLOW_AFTER_S` while ``slow.limit``
    other slow bodies are being received; :class:`ClientGone` when ``chunks`` fails."""
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyRefused(413, f"request body exceeds {max_bytes} bytes (serve.max_body_bytes)")
    parts: list[bytes] = []
    size = 0

    async def collect():
        nonlocal size
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise BodyRefused(413, f"request body exceeds {max_bytes} bytes (serve.max_body_bytes)")
                parts.append(chunk)
        except BodyRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the transport raised, the body is lost
            raise ClientGone(type(exc).__name__) from exc

    start = time.monotonic()
    task = asyncio.ensure_future(collect())
    task.add_done_callback(_retrieve)
    counted = False
    try:
        done, _ = await asyncio.wait({task}, timeout=min(SLOW_AFTER_S, timeout_s))
        if not done:
            if slow.count >= slow.limit:
                raise BodyRefused(408, f"request body not received within {SLOW_AFTER_S:g} s while {slow.limit} other "
                                       "slow bodies are being received (serve.max_slow_body_readers); send the body "
                                       "at once and retry")
            slow.count += 1
            counted = True
            left = timeout_s - (time.monotonic() - start)
            done, _ = await asyncio.wait({task}, timeout=max(0.0, left))
            if not done:
                raise BodyRefused(408, f"request body not received within {timeout_s:g} s (serve.body_read_timeout_s)")
        task.result()
        return b"".join(parts)
    finally:
        if not task.done():
            task.cancel()
        if counted:
            slow.count -= 1


def _retrieve(task: asyncio.Future) -> None:
    """Mark the body task's failure as seen: when the caller stopped waiting first (it was cancelled,
    or refused the body), asyncio would otherwise log "Task exception was never retrieved"."""
    if not task.cancelled():
        task.exception()
