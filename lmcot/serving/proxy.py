"""Serve's HTTP proxy answers its own errors in the service's one JSON shape, and logs them in Serve's log.

Framework-free (plain ASGI), so the proxy process needs only this module,
:mod:`lmcot.serving.edges`, :mod:`lmcot.serving.errors` (the shape) and :mod:`lmcot.serving.logs`.
:func:`proxy_middlewares` is the callback that installs it: set
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` to :data:`PROXY_CALLBACK`'s value in the environment
where the cluster starts (before ``ray start``; ``lmcot serve`` and the tests set it for their local
cluster).
"""

from __future__ import annotations

import json
import logging

from lmcot.serving import edges
from lmcot.serving.errors import error_body
from lmcot.serving.logs import log_to_serve

log = logging.getLogger(__name__)
RETRY_AFTER_S = 1
"""``Retry-After`` of a 503 for a full queue: capacity frees up within about one request."""
REPLACED_RETRY_AFTER_S = 10
"""``Retry-After`` of a 503 for a lost replica: Serve's default health-check period
(``serve.*.health_check_period_s``), within which a replacement is started."""
PROXY_CALLBACK = ("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "lmcot.serving.proxy:proxy_middlewares")
"""The environment variable, and its value, that make Serve's proxy call :func:`proxy_middlewares`."""


def proxy_middlewares() -> list:
    """Serve's HTTP proxy callback (:data:`PROXY_CALLBACK`): :class:`JsonErrorsMiddleware`, and this
    module's log lines (the request id of every error the proxy answers) in the proxy's Serve log."""
    from starlette.middleware import Middleware

    log_to_serve()
    return [Middleware(JsonErrorsMiddleware)]


class JsonErrorsMiddleware:
    """ASGI middleware for Serve's HTTP proxy: clean headers in, its own error answers in the one JSON shape.

    Before the proxy reads the request, header values that are not UTF-8 are dropped and the
    request id is made valid (:func:`lmcot.serving.edges.clean_headers`): Serve's proxy decodes
    some headers as UTF-8 and answered a plain-text 500 to any other bytes.

    The proxy answers some requests without the application: 503 when a deployment's queue is
    full (``max_queued_requests``), 408 past its own timeout, a plain-text 500 when it fails, and
    nothing at all when the ingress replica dies mid-request. This middleware turns a non-JSON
    error into the JSON shape with an honest reason (a full queue is 503 "at capacity" with a short
    ``Retry-After``, a failure stays 500), and a response that never started into 503 "the replica
    stopped" with the health-check period as ``Retry-After``. Application answers (always JSON)
    pass through.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope["headers"], rid = edges.clean_headers(list(scope.get("headers", [])))
        state = {"started": False, "held": None}

        async def guarded_send(message):
            if message["type"] == "http.response.start":
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
                if message["status"] >= 400 and "json" not in headers.get("content-type", ""):
                    state["held"] = message  # replace its body below
                    return
                state["started"] = True
                return await send(message)
            if state["held"] is not None:
                if not message.get("more_body", False):
                    held, state["held"] = state["held"], None
                    await _send_error(send, rid, held["status"])
                    state["started"] = True
                return None
            return await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception:  # noqa: BLE001 - the proxy lost the request: answer for it
            log.warning("request %s lost in the proxy", rid, exc_info=True)
        if not state["started"]:
            await _send_error(send, rid, 0)


def proxy_error(status: int, rid: str) -> tuple[int, str, str | None, int | None]:
    """(status, message, code, Retry-After) the proxy answers for its own ``status`` (0: nothing was sent).

    >>> proxy_error(503, "r")[0::3], proxy_error(0, "r")[0::3], proxy_error(500, "r")[0::3]
    ((503, 1), (503, 10), (500, None))
    """
    if status == 0:
        return (503, "the replica serving this request stopped; retry after the Retry-After delay (a replacement "
                     "starts within it)", "service_unavailable", REPLACED_RETRY_AFTER_S)
    if status in (429, 503):
        return (status, "the service is at capacity; retry after the Retry-After delay", "service_unavailable",
                RETRY_AFTER_S)
    if status == 408:
        return 408, "the request took longer than the proxy allows; retry with a smaller request", "timeout", None
    if status < 500:
        return status, f"the request was refused by the proxy ({status})", None, None
    return (status, f"internal error in the HTTP proxy while serving request {rid}; it is in the server log under "
                    "this id", "internal_error", None)


async def _send_error(send, rid: str, status: int) -> None:
    status, message, code, retry = proxy_error(status, rid)
    log.log(logging.ERROR if status == 500 else logging.WARNING, "request %s: proxy answered %d: %s", rid, status,
            message)
    body = json.dumps(error_body(message, None, status, code, rid)).encode()
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"x-request-id", rid.encode())]  # sent past Serve's own request-id middleware: set it here
    if retry:
        out.append((b"retry-after", str(retry).encode()))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})
