"""The HTTP edge of the serve graph: request schemas, limits, bearer auth, errors, OpenAI wire format.

Kept apart from the deployments (``lmcot.stages.serve``) so the rules a request must
pass are in one place and testable without a cluster. Every check runs in the
ingress before a model is called.

**One error shape.** Every error the service answers, from a refused field to a lost
replica, is JSON in the OpenAI error shape plus the request id:
``{"error": {"message": "k: must be between 1 and 16 (serve.max_k), got 40",
"type": "invalid_request_error", "param": "k", "code": null, "request_id": "..."}}``.
The message names the field and the fix; it never carries a traceback, a pid, an
address or an actor id (those go to the server log under the same request id, which is
also the ``X-Request-ID`` response header). Bad input is 422 on ``/v1/answer`` (FastAPI's
convention) and 400 on ``/openai/v1`` (what the OpenAI API answers, so ``openai`` clients
raise ``BadRequestError``). Errors Ray Serve's proxy answers itself (a queue full, the
ingress replica lost mid-request) get the same shape from :func:`proxy_middlewares`.

Bodies are read by hand (streamed, capped at ``serve.max_body_bytes``, within
``serve.body_read_timeout_s``, few slow ones at once) and parsed with pydantic in strict mode, so a
string where a number belongs, malformed JSON, an oversized or trickled body are 4xx, never a 500.
Hostile header bytes and request ids are cleaned before anything reads them
(:mod:`lmcot.serving.edges`), and every error is logged with its request id: 4xx at INFO, 503/504
at WARNING, 500 with its traceback at ERROR.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmcot.config import ServeConfig
from lmcot.serving import edges
from lmcot.prompting.fitting import PromptTooLong
from lmcot.serving.model_queue import ContextLengthExceeded
from lmcot.serving.proxy import (REPLACED_RETRY_AFTER_S, RETRY_AFTER_S, JsonErrorsMiddleware, error_body,  # noqa: F401
                                 error_type)
from lmcot.datasets.context import build_context
from lmcot.datasets.data import Example, Paragraph

log = logging.getLogger(__name__)
OPENAI_PREFIX = "/openai/v1"
MIN_TEMPERATURE = 1e-3
"""Smallest non-zero sampling temperature accepted. Below it ``logits / T`` overflows to inf,
the sampling distribution becomes NaN and the model call fails; 0 means greedy."""
class ApiError(Exception):
    """A request the service refuses: HTTP ``status`` with a message naming ``param``.

    ``code`` is OpenAI's machine-readable error code (``model_not_found``, ``invalid_api_key``...).
    """

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers, self.code = status, message, param, headers, code


def request_id_of(headers) -> str:
    """The request id in ``x-request-id``: the client's own if valid, else the one :class:`JsonErrorsMiddleware`
    put there (so body, header and log agree); a new one only where no middleware ran."""
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


def _internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Anything unexpected: logged with its traceback under the request id, answered without internals."""
    rid = request_id_of(request.headers)
    log.error("request %s failed: %s", rid, exc, exc_info=exc)
    return JSONResponse(error_body(f"internal error while serving request {rid}; it is in the server log under "
                                   "this id", None, 500, "internal_error", rid), status_code=500)


def validation_status(path: str) -> int:
    """400 on the OpenAI routes (as OpenAI answers), 422 elsewhere.

    >>> validation_status("/openai/v1/completions"), validation_status("/v1/answer")
    (400, 422)
    """
    return 400 if path.startswith(OPENAI_PREFIX) or f"{OPENAI_PREFIX}/" in path else 422


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
    api.add_exception_handler(Exception, _internal_error_handler)
    return api


# -- errors Serve's proxy answers itself ---------------------------------------------------------
def proxy_middlewares() -> list:
    """Serve's HTTP proxy callback: ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=lmcot.stages.serve_http:proxy_middlewares``.

    Set it in the environment where the cluster starts (before ``ray start``; ``lmcot serve``
    and the tests set it for their local cluster).
    """
    from starlette.middleware import Middleware

    return [Middleware(JsonErrorsMiddleware)]


PROXY_CALLBACK = ("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "lmcot.stages.serve_http:proxy_middlewares")


# -- auth and body -------------------------------------------------------------------------
def check_bearer(request: Request, token: str) -> None:
    """Raise 401 unless the request carries ``Authorization: Bearer <token>`` (no-op when token is empty)."""
    if not token:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise ApiError(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                       "authorization", {"WWW-Authenticate": "Bearer"}, code="invalid_api_key")


async def read_body(request: Request, limits: ServeConfig, slow: edges.SlowReaders) -> bytes:
    """The raw body (:func:`lmcot.serving.edges.read_body`): 413 over ``serve.max_body_bytes``, 408 when
    it does not arrive within ``serve.body_read_timeout_s`` or arrives slowly while too many others do."""
    try:
        return await edges.read_body(request.stream(), max_bytes=limits.max_body_bytes,
                                     timeout_s=limits.body_read_timeout_s, slow=slow,
                                     declared=request.headers.get("content-length", ""))
    except edges.BodyRefused as exc:
        raise ApiError(exc.status, exc.message, "body", code="timeout" if exc.status == 408 else None) from None


def context_length_error(exc: PromptTooLong, param: str) -> ApiError:
    """OpenAI's 400 ``context_length_exceeded`` for a prompt over the model's input limit, naming ``param``
    (a :class:`ContextLengthExceeded` says the limit and the count)."""
    if isinstance(exc, ContextLengthExceeded):
        message = f"{exc.message} (limit {exc.limit} tokens, got {exc.tokens})"
    else:
        message = f"the prompt is longer than the model's input limit: {exc}"
    return ApiError(400, f"{param}: {message}", param, code="context_length_exceeded")


_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*|dict\[.*|function-.*|json-or-python.*|"
                        r"lax-or-strict.*|literal\[.*|[A-Z]\w*)$")


def field_path(loc: tuple) -> str:
    """A pydantic error location as the request's field path, without union member tags.

    >>> field_path(("prompt", "list[str]", 0)), field_path(("messages", 0, "content", "str"))
    ('prompt.0', 'messages.0.content')
    """
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and _UNION_TAG.match(p))) or "body"


def parse(model: type[BaseModel], body: bytes, limits: ServeConfig, status: int = 422):
    """Validate a JSON body into ``model`` (limits in the validation context); ``status`` naming the field.

    The message names the first bad field and lists the others, so one round trip shows them all.
    """
    try:
        return model.model_validate_json(body or b"null", context=limits)
    except ApiError as exc:  # a model validator's own refusal
        exc.status = status
        raise
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        fields = [field_path(e["loc"]) for e in errors]
        # a union field reports each member's errors: name the deepest one under the first field
        i = max((j for j, f in enumerate(fields) if f == fields[0] or f.startswith(fields[0] + ".")),
                key=lambda j: fields[j].count("."))
        first = errors[i]["msg"].removeprefix("Value error, ")
        more = sorted(set(fields) - {fields[i], fields[0]})
        message = f"{fields[i]}: {first}" + (f" (also invalid: {', '.join(more)})" if more else "")
        raise ApiError(status, message, fields[i]) from None


def _limits(info: ValidationInfo) -> ServeConfig:
    return info.context if isinstance(info.context, ServeConfig) else ServeConfig()


def check_temperature(v: float) -> float:
    """0 (greedy) or a temperature the model can sample with: ``MIN_TEMPERATURE`` to 2.

    >>> check_temperature(0.0), check_temperature(0.7)
    (0.0, 0.7)
    >>> check_temperature(1e-40)
    Traceback (most recent call last):
    ...
    ValueError: must be 0 (greedy) or between 0.001 and 2, got 1e-40
    """
    if not (v == 0 or MIN_TEMPERATURE <= v <= 2):
        raise ValueError(f"must be 0 (greedy) or between {MIN_TEMPERATURE:g} and 2, got {v:g}")
    return v


def check_budget(limits: ServeConfig, param: str, status: int, **factors: int) -> None:
    """Refuse a request whose worst case, the product of ``factors`` in new tokens, is over ``serve.max_request_tokens``.

    >>> check_budget(ServeConfig(max_request_tokens=100), "max_tokens", 400, prompts=2, n=2, max_tokens=25)
    >>> check_budget(ServeConfig(max_request_tokens=100), "max_tokens", 400, prompts=2, n=2, max_tokens=26)
    Traceback (most recent call last):
    ...
    lmcot.stages.serve_http.ApiError: max_tokens: this request may generate prompts=2 x n=2 x max_tokens=26 = 104 tokens; the limit is 100 (serve.max_request_tokens): lower max_tokens or another factor
    """
    cost = 1
    for value in factors.values():
        cost *= value
    if cost > limits.max_request_tokens:
        product = " x ".join(f"{k}={v}" for k, v in factors.items())
        raise ApiError(status, f"{param}: this request may generate {product} = {cost} tokens; the limit is "
                               f"{limits.max_request_tokens} (serve.max_request_tokens): lower {param} or another "
                               "factor", param, code="request_too_large")


# -- /v1/answer ---------------------------------------------------------------------------
class AnswerRequest(BaseModel):
    """``POST /v1/answer``: one question, answered by ``method`` with ``k`` samples and a vote."""

    model_config = ConfigDict(strict=True, extra="forbid")

    question: str
    context: Any = ""
    """Plain text, or the official ``[[title, [sentence, ...]], ...]`` paragraphs."""
    k: int | None = None
    method: Literal["standard", "cot", "lm_guided"] | None = None
    temperature: float | None = None
    adaptive: bool | None = None

    @field_validator("question")
    @classmethod
    def _question(cls, v: str, info: ValidationInfo) -> str:
        limit = _limits(info).max_question_chars
        if not v.strip():
            raise ValueError("must not be empty")
        if len(v) > limit:
            raise ValueError(f"has {len(v)} characters; the limit is {limit} (serve.max_question_chars)")
        return v.strip()

    @field_validator("context")
    @classmethod
    def _context(cls, v: Any, info: ValidationInfo) -> Any:
        limits = _limits(info)
        shape = "plain text or official [[title, [sentence, ...]], ...] paragraphs"
        if isinstance(v, str):
            size = len(v)
        elif isinstance(v, list):
            if len(v) > limits.max_paragraphs:
                raise ValueError(f"has {len(v)} paragraphs; the limit is {limits.max_paragraphs} (serve.max_paragraphs)")
            size = 0
            for i, item in enumerate(v):
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                        and isinstance(item[1], list) and all(isinstance(s, str) for s in item[1])):
                    raise ValueError(f"item {i} must be [title, [sentence, ...]], got {str(item)[:60]}")
                size += len(item[0]) + sum(len(s) for s in item[1])
        else:
            raise ValueError(f"must be {shape}, got {type(v).__name__}")
        if size > limits.max_context_chars:
            raise ValueError(f"has {size} characters; the limit is {limits.max_context_chars} (serve.max_context_chars)")
        return v

    @field_validator("k")
    @classmethod
    def _k(cls, v: int | None, info: ValidationInfo) -> int | None:
        max_k = _limits(info).max_k
        if v is not None and not 1 <= v <= max_k:
            raise ValueError(f"must be between 1 and {max_k} (serve.max_k), got {v}")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float | None) -> float | None:
        return v if v is None else check_temperature(v)

    def resolved(self, limits: ServeConfig, default_temperature: float) -> tuple[int, str, float, bool]:
        """(k, method, temperature, adaptive) with the service defaults filled in; 422 if inconsistent."""
        k = self.k if self.k is not None else limits.default_k
        temperature = self.temperature if self.temperature is not None else default_temperature
        if k > 1 and temperature <= 0:
            raise ApiError(422, f"temperature: must be > 0 to draw k={k} samples (k = 1 is greedy)", "temperature")
        adaptive = limits.adaptive if self.adaptive is None else self.adaptive
        return k, self.method or limits.default_method, temperature, adaptive


def context_text(context: str | list, tokenizer=None, max_tokens: int = 0) -> str:
    """The context string for prompts, fitted to ``max_tokens`` (``lmcot.datasets.context`` for official paragraphs)."""
    if isinstance(context, str):
        text = context.strip()
        if tokenizer is None or max_tokens <= 0:
            return text
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens], skip_special_tokens=True).strip()
    example = Example(
        id="request", question="", answer="", paragraphs=tuple(Paragraph(t, tuple(s)) for t, s in context),
        supporting_facts=(), type="", dataset="hotpotqa",
    )
    return build_context(example, mode="all", tokenizer=tokenizer, max_tokens=max_tokens)


# -- OpenAI-compatible requests ---------------------------------------------------------------
class _OpenAIRequest(BaseModel):
    """Fields shared by ``/completions`` and ``/chat/completions`` (unknown fields are ignored, as OpenAI servers do)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str = ""
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v: int | None, info: ValidationInfo) -> int | None:
        limit = _limits(info).max_new_tokens
        if v is not None and not 1 <= v <= limit:
            raise ValueError(f"must be between 1 and {limit} (serve.max_new_tokens), got {v}")
        return v

    @field_validator("n")
    @classmethod
    def _n(cls, v: int, info: ValidationInfo) -> int:
        if not 1 <= v <= _limits(info).max_k:
            raise ValueError(f"must be between 1 and {_limits(info).max_k} (serve.max_k), got {v}")
        return v

    @field_validator("temperature")
    @classmethod
    def _temp(cls, v: float) -> float:
        return check_temperature(v)

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError(f"must be in (0, 1], got {v}")
        return v

    @field_validator("stream")
    @classmethod
    def _stream(cls, v: bool) -> bool:
        if v:
            raise ValueError("streaming is not supported; send stream: false")
        return v

    @model_validator(mode="after")
    def _sampling(self):
        if self.n > 1 and self.temperature <= 0:
            raise ApiError(422, f"temperature: must be > 0 to draw n={self.n} completions (greedy gives one)",
                           "temperature")
        return self

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else [s for s in (self.stop or []) if s]


def _top_logprobs_limit(v: int | None, info: ValidationInfo) -> int | None:
    limit = _limits(info).max_top_logprobs
    if v is not None and not 0 <= v <= limit:
        raise ValueError(f"must be between 0 and {limit} (serve.max_top_logprobs), got {v}")
    return v


class CompletionRequest(_OpenAIRequest):
    """``POST /openai/v1/completions``."""

    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str], info: ValidationInfo) -> list[str]:
        limits = _limits(info)
        prompts = [v] if isinstance(v, str) else v
        if not prompts or len(prompts) > limits.max_prompts:
            raise ValueError(f"must hold 1 to {limits.max_prompts} prompts (serve.max_prompts), got {len(prompts)}")
        if any(len(p) > limits.max_context_chars for p in prompts):
            raise ValueError(f"a prompt is longer than {limits.max_context_chars} characters (serve.max_context_chars)")
        return prompts

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        return _top_logprobs_limit(v, info)

    @field_validator("echo")
    @classmethod
    def _echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported; send echo: false")
        return v


class TextPart(BaseModel):
    """One part of a multi-part message content, as the ``openai`` client sends it; only text is served."""

    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A chat message; ``content`` is a string or a list of text parts (joined with newlines)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class ChatCompletionRequest(_OpenAIRequest):
    """``POST /openai/v1/chat/completions`` (messages are flattened into one prompt, see :func:`chat_prompt`)."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    """Accepted as the newer spelling of ``max_tokens``."""
    logprobs: bool = False
    top_logprobs: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _alias_max_tokens(cls, data: Any) -> Any:
        """``max_completion_tokens`` (the newer name) counts as ``max_tokens``."""
        if isinstance(data, dict) and data.get("max_tokens") is None and "max_completion_tokens" in data:
            data = {**data, "max_tokens": data["max_completion_tokens"]}
        return data

    @field_validator("top_logprobs")
    @classmethod
    def _top(cls, v: int | None, info: ValidationInfo) -> int | None:
        return _top_logprobs_limit(v, info)

    @field_validator("messages")
    @classmethod
    def _messages(cls, v: list[ChatMessage], info: ValidationInfo) -> list[ChatMessage]:
        limit = _limits(info).max_context_chars
        if not v:
            raise ValueError("must hold at least one message")
        if sum(len(m.text()) for m in v) > limit:
            raise ValueError(f"are longer than {limit} characters together (serve.max_context_chars)")
        return v


def chat_prompt(messages: list[ChatMessage]) -> str:
    """One user message is the prompt itself; a conversation becomes ``Role: text`` lines ending in ``Assistant:``.

    >>> chat_prompt([ChatMessage(role="user", content="Is it? Answer yes or no.")])
    'Is it? Answer yes or no.'
    """
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].text()
    lines = [f"{m.role.capitalize()}: {m.text()}" for m in messages]
    return "\n\n".join(lines + ["Assistant:"])


def completion_call(req: _OpenAIRequest, prompts: list[str], top: int | None, default_max_tokens: int) -> dict:
    """The plain call the Answerer deployment runs for one OpenAI request."""
    return {"prompts": prompts, "max_tokens": req.max_tokens or default_max_tokens, "n": req.n,
            "temperature": req.temperature, "top_p": req.top_p, "top_logprobs": top, "stop": req.stops()}


def completion_response(model: str, result: dict) -> dict:
    """OpenAI ``text_completion`` body from the Answerer's result."""
    choices = []
    for i, c in enumerate(result["choices"]):
        lp = None
        if c.get("logprobs") is not None:
            tokens = c["logprobs"]
            offsets, pos = [], 0
            for t in tokens["tokens"]:
                offsets.append(pos)
                pos += len(t)
            lp = {**tokens, "text_offset": offsets}
        choices.append({"index": i, "text": c["text"], "logprobs": lp, "finish_reason": c["finish_reason"]})
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": _usage(result)}


def chat_response(model: str, result: dict) -> dict:
    """OpenAI ``chat.completion`` body from the Answerer's result."""
    choices = []
    for i, c in enumerate(result["choices"]):
        lp = None
        if c.get("logprobs") is not None:
            t = c["logprobs"]
            lp = {"content": [
                {"token": tok, "logprob": logprob, "bytes": list(tok.encode()),
                 "top_logprobs": [{"token": a, "logprob": b, "bytes": list(a.encode())} for a, b in top.items()]}
                for tok, logprob, top in zip(t["tokens"], t["token_logprobs"], t["top_logprobs"])
            ]}
        choices.append({"index": i, "message": {"role": "assistant", "content": c["text"]}, "logprobs": lp,
                        "finish_reason": c["finish_reason"]})
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": _usage(result)}


def _usage(result: dict) -> dict:
    p, c = result["prompt_tokens"], result["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def models_body(models: list[tuple[str, str]]) -> dict:
    """OpenAI ``/models`` list of (id, role) pairs."""
    return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "lmcot", "role": role}
                                       for m, role in models]}
