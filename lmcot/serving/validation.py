"""Parsing a request body into its schema: strict types, the service's limits, a 4xx naming the field.

Bodies are parsed with pydantic in strict mode, with the ``serve`` config in the validation
context (:func:`limits_of`), so a string where a number belongs, malformed JSON or a value over a
limit is a 4xx whose message names the field and the fix, never a 500. The schemas themselves live
with their routes: :mod:`lmcot.serving.answer` and :mod:`lmcot.serving.openai_api`.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ValidationError, ValidationInfo

from lmcot.config import ServeConfig
from lmcot.serving.errors import ApiError

MIN_TEMPERATURE = 1e-3
"""Smallest non-zero sampling temperature accepted. Below it ``logits / T`` overflows to inf,
the sampling distribution becomes NaN and the model call fails; 0 means greedy."""

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


def limits_of(info: ValidationInfo) -> ServeConfig:
    """The ``serve`` config a validator checks against (its defaults outside :func:`parse`)."""
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
