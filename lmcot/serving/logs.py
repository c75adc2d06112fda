"""lmcot's log lines in Ray Serve's logs, in every Serve process: replicas and the HTTP proxy.

Serve configures one logger, ``ray.serve``, with its handlers (the component's log file under
``logs/serve/``, request fields, level); ``lmcot.*`` loggers otherwise reach only the worker's
stderr, and not below WARNING. :func:`log_to_serve` sends them through whatever handlers
``ray.serve`` has at the time a line is logged, so a request id leads to the lines about that
request, including after Serve reconfigures its logging (a new ``logging_config`` replaces its
handlers). It reads the ``ray.serve`` logger by name and imports no Ray: outside Serve that logger
has no handlers and nothing changes.
"""

from __future__ import annotations

import logging

SERVE_LOGGER = "ray.serve"


class ToServeLogs(logging.Handler):
    """Hands each record to the ``ray.serve`` logger's current handlers, at that logger's level."""

    def emit(self, record: logging.LogRecord) -> None:
        serve = logging.getLogger(SERVE_LOGGER)
        if record.levelno >= serve.getEffectiveLevel():
            serve.handle(record)


def log_to_serve() -> None:
    """Route the ``lmcot`` loggers of this process into Serve's logs (no-op where Serve has no handlers)."""
    serve, ours = logging.getLogger(SERVE_LOGGER), logging.getLogger("lmcot")
    if not serve.handlers or any(isinstance(h, ToServeLogs) for h in ours.handlers):
        return
    ours.handlers = [ToServeLogs()]
    ours.setLevel(serve.level)
    ours.propagate = False
