"""``POST /v1/answer``: its request schema, the context it builds, the body it answers.

One question with its context (plain text or official ``[[title, [sentence, ...]], ...]``
paragraphs), answered by ``method`` with ``k`` samples and a vote, optionally adaptive (see
:mod:`lmcot.inference.adaptive`). Every field is checked against the ``serve`` limits when the
body is parsed (:func:`lmcot.serving.validation.parse`); bad input here is 422.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from lmcot.config import ServeConfig
from lmcot.datasets.context import build_context
from lmcot.datasets.data import Example, Paragraph
from lmcot.serving.errors import ApiError
from lmcot.serving.validation import check_temperature, limits_of


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
        limit = limits_of(info).max_question_chars
        if not v.strip():
            raise ValueError("must not be empty")
        if len(v) > limit:
            raise ValueError(f"has {len(v)} characters; the limit is {limit} (serve.max_question_chars)")
        return v.strip()

    @field_validator("context")
    @classmethod
    def _context(cls, v: Any, info: ValidationInfo) -> Any:
        limits = limits_of(info)
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
        max_k = limits_of(info).max_k
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


def answer_body(result, method: str, k: int, latency_s: float) -> dict:
    """The ``/v1/answer`` response for a method's result (:class:`~lmcot.inference.method.MethodResult`)."""
    return {
        "answer": result.answer, "votes": result.votes, "rationales": result.rationales,
        "answers": result.answers, "method": method, "k": k, "samples": len(result.answers),
        "usage": {role: u.as_dict() for role, u in result.usage.items()},
        "latency_ms": round(1000 * latency_s, 1),
    }
