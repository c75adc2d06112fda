"""The ingress's FastAPI app: every refusal in the one error shape, logged under its request id.

:func:`new_api` is the app the ingress declares its routes on, with lmcot's exception handlers:
:class:`~lmcot.serving.errors.ApiError`, Starlette's own 404/405, FastAPI's validation errors and
anything unexpected all answer in the shape of :mod:`lmcot.serving.errors`. Every error is logged
with its request id: 4xx at INFO, 503/504 at WARNING, 500 with its traceback at ERROR.

Bodies are read by hand (:func:`read_body`: streamed, capped at ``serve.max_body_bytes``, within
``serve.body_read_timeout_s``, few slow ones at once; :mod:`lmcot.serving.edges`). A client that
disconnects while sending its body (:class:`~lmcot.serving.edges.ClientGone`, or Starlette's
``ClientDisconnect``) has made no request: it is logged at INFO and answered 499 (nginx's "client
closed request", which no one reads), never a 500 with a traceback.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from lmcot.config import ServeConfig
from lmcot.prompting.fitting import PromptTooLong
from lmcot.serving import edges
from lmcot.serving.errors import ApiError, error_body, validation_status
from lmcot.serving.model_queue import ContextLengthExceeded

log = logging.getLogger(__name__)
CLIENT_CLOSED = 499
"""Status logged for a request whose client went away before sending all of its body."""


def request_id_of(headers) -> str:
    """The request id in ``x-request-id``: the client's own if valid, else the one
    :class:`~lmcot.serving.proxy.JsonErrorsMiddleware` put there (so body, header and log agree);
    a new one only where no middleware ran."""
    rid = headers.get("x-request-id") or ""
    return rid if edges.valid_request_id(rid.encode("latin-1", "replace")) else uuid.uuid4().hex


def error_response(request: Request, status: int, message: str, param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    """The error in the one shape, logged under its request id (Serve's proxy sets the same id as
    the X-Request-ID response header)."""
    rid = request_id_of(request.headers)
    level = logging.INFO if status < 500 else logging.ERROR if status == 500 else logging.WARNING
    log.log(level, "request %s: %d %s (%s %s)", rid, status, message, request.method, edges.printable(request.url.path))
    return JSONResponse(error_body(message, param, status, code, rid), status_code=status, headers=headers)


def _api_error_handler(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(request, exc.status, exc.message, exc.param, exc.code, exc.headers)


def _http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method) in the one shape, worded as OpenAI words them."""
    if exc.status_code in (404, 405):
        path = edges.printable(request.url.path)
        message = f"Invalid URL ({request.method} {path})"
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {path}"
        return error_response(request, exc.status_code, message, None, "unknown_url", exc.headers)
    return error_response(request, exc.status_code, str(exc.detail), None, None, exc.headers)


def _validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(request, validation_status(request.url.path), "invalid request", "body")


def _client_gone_handler(request: Request, exc: Exception) -> JSONResponse:
    how = str(exc) or type(exc).__name__  # the transport's exception type, never its text (ids, addresses)
    return error_response(request, CLIENT_CLOSED, f"the client disconnected before sending the whole body ({how})",
                          "body")


def _internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Anything unexpected: logged with its traceback under the request id, answered without internals."""
    rid = request_id_of(request.headers)
    log.error("request %s failed: %s", rid, exc, exc_info=exc)
    return JSONResponse(error_body(f"internal error while serving request {rid}; it is in the server log under "
                                   "this id", None, 500, "internal_error", rid), status_code=500)


def new_api() -> FastAPI:
    """The FastAPI app the ingress routes are declared on, with lmcot's error handlers.

    FastAPI's own ``/docs``, ``/redoc`` and ``/openapi.json`` are off: the ingress serves
    ``/docs`` and ``/openapi.json`` itself, behind the same bearer token as every route.
    """
    api = FastAPI(title="lmcot", description="LM-guided chain-of-thought: a small LM reasons, a large LM answers.",
                  docs_url=None, redoc_url=None, openapi_url=None)
    api.add_exception_handler(ApiError, _api_error_handler)
    api.add_exception_handler(StarletteHTTPException, _http_error_handler)
    api.add_exception_handler(RequestValidationError, _validation_error_handler)
    api.add_exception_handler(edges.ClientGone, _client_gone_handler)
    api.add_exception_handler(ClientDisconnect, _client_gone_handler)
    api.add_exception_handler(Exception, _internal_error_handler)
    return api


async def read_body(request: Request, limits: ServeConfig, slow: edges.SlowReaders) -> bytes:
    """The raw body (:func:`lmcot.serving.edges.read_body`): 413 over ``serve.max_body_bytes``, 408 when
    it does not arrive within ``serve.body_read_timeout_s`` or arrives slowly while too many others do;
    :class:`~lmcot.serving.edges.ClientGone` when the client goes away (see the module docstring)."""
    try:
        return await edges.read_body(request.stream(), max_bytes=limits.max_body_bytes,
                                     timeout_s=limits.body_read_timeout_s, slow=slow,
                                     declared=request.headers.get("content-length", ""))
    except edges.BodyRefused as exc:
        raise ApiError(exc.status, exc.message, "body", code="timeout" if exc.status == 408 else None) from None


def context_length_error(exc: PromptTooLong, param: str, status: int = 400) -> ApiError:
    """``context_length_exceeded`` for a prompt over the model's input limit, naming ``param`` (a
    :class:`~lmcot.serving.model_queue.ContextLengthExceeded` says the limit and the count); ``status``
    is the route's status for bad input (:func:`~lmcot.serving.errors.validation_status`).

    >>> e = context_length_error(ContextLengthExceeded("too long", 512, 600), "question", 422)
    >>> e.status, e.code, e.message
    (422, 'context_length_exceeded', 'question: too long (limit 512 tokens, got 600)')
    """
    if isinstance(exc, ContextLengthExceeded):
        message = f"{exc.message} (limit {exc.limit} tokens, got {exc.tokens})"
    else:
        message = f"the prompt is longer than the model's input limit: {exc}"
    return ApiError(status, f"{param}: {message}", param, code="context_length_exceeded")
