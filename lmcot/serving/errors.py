"""The service's one error shape, and the refusals every route shares.

Every error the service answers, from a refused field to a lost replica, is JSON in the OpenAI
error shape plus the request id:
``{"error": {"message": "k: must be between 1 and 16 (serve.max_k), got 40",
"type": "invalid_request_error", "param": "k", "code": null, "request_id": "..."}}``.
The message names the field and the fix; it never carries a traceback, a pid, an address or an
actor id (those go to the server log under the same request id, which is also the
``X-Request-ID`` response header). Bad input is 422 on ``/v1/answer`` (FastAPI's convention) and
400 on ``/openai/v1`` (what the OpenAI API answers, so ``openai`` clients raise
``BadRequestError``); a prompt over the model's input limit is bad input like any other, so it
follows the same rule.

Framework-free and importing nothing: Serve's proxy process answers its own errors in this shape
(:mod:`lmcot.serving.proxy`). What it leaves out: header bytes that
uvicorn's parser refuses (a bare CR or LF, a NUL) get uvicorn's own plain-text 400 before any
lmcot code runs.
"""

from __future__ import annotations

OPENAI_PREFIX = "/openai/v1"
"""Where the OpenAI-compatible routes live; their bad input is 400, as OpenAI answers."""


class ApiError(Exception):
    """A request the service refuses: HTTP ``status`` with a message naming ``param``.

    ``code`` is OpenAI's machine-readable error code (``model_not_found``, ``invalid_api_key``...).
    """

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers, self.code = status, message, param, headers, code


def error_type(status: int) -> str:
    """OpenAI's ``error.type`` for a status.

    >>> [error_type(s) for s in (400, 401, 429, 500, 503)]
    ['invalid_request_error', 'invalid_request_error', 'rate_limit_error', 'server_error', 'server_error']
    """
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def error_body(message: str, param: str | None, status: int, code: str | None = None, request_id: str = "") -> dict:
    """The one error shape (see the module docstring)."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code,
                      "request_id": request_id}}


def validation_status(path: str) -> int:
    """Status of bad input: 400 on the OpenAI routes (as OpenAI answers), 422 elsewhere.

    >>> validation_status("/openai/v1/completions"), validation_status("/v1/answer")
    (400, 422)
    """
    return 400 if path.startswith(OPENAI_PREFIX) or f"{OPENAI_PREFIX}/" in path else 422

