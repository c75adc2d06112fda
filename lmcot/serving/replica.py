"""What a model replica of the serve graph receives and returns, without Ray.

Each model replica (``Rationalizer``, ``Answerer`` in :mod:`lmcot.stages.serve_worker`) holds one
:class:`~lmcot.serving.model_queue.QueuedModel` sized by :func:`queue_limits`; the ingress sends it
:class:`GenerateCall` objects (and OpenAI calls, :mod:`lmcot.serving.openai_api`).

A prompt over the model's input limit is the client's mistake, answered 4xx: the replica returns
it as :class:`Refused` instead of raising it (:func:`refusing`), because Serve logs every exception
a replica method raises as a failed request, at ERROR with a traceback; the ingress raises it again
(:func:`unwrap`) and answers ``context_length_exceeded``. Every other failure is raised as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, TypeVar

from lmcot.config import Config
from lmcot.config.serve import DeploymentSpec
from lmcot.prompting.fitting import PromptTooLong
from lmcot.serving.work_queue import QueueLimits

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class GenerateCall:
    """One caller's prompts and decoding settings; calls with equal settings share a model call."""

    prompts: tuple[str, ...]
    max_new_tokens: int
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    timeout_s: float | None = None
    """Seconds the caller still waits; past them the call leaves the model queue with a TimeoutError."""


def queue_limits(cfg: Config, spec: DeploymentSpec) -> QueueLimits:
    """A model deployment's queue: a batch is one ``generation.batch_size`` of rows and at most
    ``serve.max_chunk_tokens`` rows x new tokens, merging up to the deployment's ``max_batch_size`` requests."""
    return QueueLimits(max_rows=cfg.generation.batch_size, max_cost=cfg.serve.max_chunk_tokens,
                       max_callers=spec.max_batch_size, gather_s=spec.batch_wait_timeout_s,
                       aging_s=cfg.serve.queue_aging_s)


async def generate(model, call: GenerateCall, tag: str = "") -> list:
    """``call`` through the replica's :class:`~lmcot.serving.model_queue.QueuedModel` (``tag``: the request id)."""
    return await model.generate(call.prompts, max_new_tokens=call.max_new_tokens, n=call.n,
                                temperature=call.temperature, top_p=call.top_p, timeout_s=call.timeout_s, tag=tag)


@dataclass(frozen=True)
class Refused:
    """A call refused for the client's own input: the error the ingress raises again (:func:`unwrap`)."""

    error: PromptTooLong


async def refusing(call: Awaitable[T], tag: str = "") -> T | Refused:
    """``await call``, with a prompt over the input limit returned as :class:`Refused` and logged at INFO.

    >>> import asyncio
    >>> async def too_long():
    ...     raise PromptTooLong("the prompt needs 600 tokens")
    >>> asyncio.run(refusing(too_long()))
    Refused(error=PromptTooLong('the prompt needs 600 tokens'))
    """
    try:
        return await call
    except PromptTooLong as exc:
        log.info("request %s refused: %s", tag or "-", exc)
        return Refused(exc)


def unwrap(result: T | Refused) -> T:
    """A replica's result, or its :class:`Refused` error raised here.

    >>> unwrap([1])
    [1]
    >>> unwrap(Refused(PromptTooLong("too long")))
    Traceback (most recent call last):
    ...
    lmcot.prompting.fitting.PromptTooLong: too long
    """
    if isinstance(result, Refused):
        raise result.error
    return result
