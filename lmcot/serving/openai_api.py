"""The OpenAI wire format of ``/openai/v1``: request schemas, the Answerer's call, the response bodies.

The ingress parses ``/completions`` and ``/chat/completions`` bodies into :class:`CompletionRequest`
and :class:`ChatCompletionRequest` (strict types, the ``serve`` limits, unknown fields ignored as
OpenAI servers do; bad input is 400 as OpenAI answers), turns one into a plain call
(:func:`completion_call`) that the Answerer replica runs through its work queue, and the replica's
choices (:func:`text_choices`, :func:`logprob_choices`: text and logprob tokens cut at the first stop
sequence) into OpenAI's ``text_completion`` and ``chat.completion`` bodies. Left out: streaming,
``echo``, tools and function calls, images (only text parts of a message are served).
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from lmcot.serving.errors import ApiError
from lmcot.serving.validation import check_temperature, limits_of

DEFAULT_MAX_TOKENS = 16
"""New tokens of a completion whose request sets no length (OpenAI's legacy completions default)."""


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
        return _new_tokens_limit(v, info)

    @field_validator("n")
    @classmethod
    def _n(cls, v: int, info: ValidationInfo) -> int:
        if not 1 <= v <= limits_of(info).max_k:
            raise ValueError(f"must be between 1 and {limits_of(info).max_k} (serve.max_k), got {v}")
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

    def new_tokens(self) -> tuple[str, int | None]:
        """The field that sets the completion's length, and its value (None: not sent)."""
        return "max_tokens", self.max_tokens


def _new_tokens_limit(v: int | None, info: ValidationInfo) -> int | None:
    limit = limits_of(info).max_new_tokens
    if v is not None and not 1 <= v <= limit:
        raise ValueError(f"must be between 1 and {limit} (serve.max_new_tokens), got {v}")
    return v


def _top_logprobs_limit(v: int | None, info: ValidationInfo) -> int | None:
    limit = limits_of(info).max_top_logprobs
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
        limits = limits_of(info)
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
    """The newer spelling of ``max_tokens``, checked and reported under its own name; where both
    are sent, ``max_tokens`` sets the length."""
    logprobs: bool = False
    top_logprobs: int | None = None

    @field_validator("max_completion_tokens")
    @classmethod
    def _max_completion_tokens(cls, v: int | None, info: ValidationInfo) -> int | None:
        return _new_tokens_limit(v, info)

    def new_tokens(self) -> tuple[str, int | None]:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return super().new_tokens()

    @field_validator("top_logprobs")
    @classmethod
    def _top(cls, v: int | None, info: ValidationInfo) -> int | None:
        return _top_logprobs_limit(v, info)

    @field_validator("messages")
    @classmethod
    def _messages(cls, v: list[ChatMessage], info: ValidationInfo) -> list[ChatMessage]:
        limit = limits_of(info).max_context_chars
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


def completion_call(req: _OpenAIRequest, prompts: list[str], top: int | None,
                    default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict:
    """The plain call the Answerer deployment runs for one OpenAI request."""
    return {"prompts": prompts, "max_tokens": req.new_tokens()[1] or default_max_tokens, "n": req.n,
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


# -- choices from the Answerer replica's results ---------------------------------------------
def trim_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` cut before the first stop sequence, and whether one was found.

    >>> trim_at_stop("Paris. Question: x", ["Question:", "\\n"])
    ('Paris. ', True)
    """
    cuts = [text.find(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def tokens_before(text: str, tokens: list[str], end: int) -> int:
    """How many of ``tokens`` (the pieces of ``text``, spaces possibly dropped) start before ``text[end]``.

    >>> tokens_before("Paris. Question: x", ["Paris", ".", "Question", ":", "x"], 7)
    2
    """
    pos, keep = 0, 0
    for name in tokens:
        at = text.find(name, pos) if name else -1
        start = pos if at < 0 else at
        if start >= end:
            break
        keep += 1
        pos = start + len(name) if at >= 0 else pos
    return keep


def logprob_choices(per_prompt: list, stops: list[str]) -> dict:
    """OpenAI choices from :meth:`~lmcot.serving.model_queue.QueuedModel.generate_with_logprobs`: text and
    tokens cut at the first stop."""
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for samples, tokens in per_prompt:
        prompt_tokens += tokens
        for s in samples:
            completion_tokens += s.completion_tokens
            text, stopped = trim_at_stop(s.text, stops)
            keep = tokens_before(s.text, s.tokens, len(text)) if stopped else len(s.tokens)
            choices.append({
                "text": text,
                "finish_reason": "stop" if stopped or s.ended else "length",
                "logprobs": {"tokens": s.tokens[:keep], "token_logprobs": s.token_logprobs[:keep],
                             "top_logprobs": s.top_logprobs[:keep]},
            })
    return {"choices": choices, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}


def text_choices(gens: list, max_tokens: int, n: int, stops: list[str]) -> dict:
    """OpenAI choices from plain generations (no logprobs), each cut at the first stop."""
    choices = []
    for g in gens:
        full = g.completion_tokens >= max_tokens * n
        for text in g.texts:
            text, stopped = trim_at_stop(text, stops)
            choices.append({"text": text, "logprobs": None, "finish_reason": "length" if full and not stopped else "stop"})
    return {"choices": choices, "prompt_tokens": sum(g.prompt_tokens for g in gens),
            "completion_tokens": sum(g.completion_tokens for g in gens)}
