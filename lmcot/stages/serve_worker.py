"""A model replica's side of the serve graph: the calls it receives, its work queue, its request ids.

Each model replica (``Rationalizer``, ``Answerer``) holds one
:class:`~lmcot.serving.model_queue.QueuedModel`: every request it serves, ``/v1/answer`` calls,
OpenAI completions with or without logprobs and yes/no scores alike, goes through that one queue,
which merges concurrent requests of equal settings into model calls, serves long requests in pieces
so short ones wait for about one piece, answers every admitted request within its timeout, and keeps
a merged call's failure with the request that caused it (see :mod:`lmcot.serving.work_queue`).
No ``@serve.batch``: the queue merges callers itself, across operations and settings.

The request id Serve's proxy gave the HTTP request travels with every call to a model replica
(the ingress keeps Serve's request context in its worker threads), so the queue's log lines about a
request carry the id its error body shows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lmcot.config import Config
from lmcot.config.serve import DeploymentSpec
from lmcot.serving.work_queue import QueueLimits


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


def request_id() -> str:
    """The id of the HTTP request this replica call serves ('' outside a request)."""
    try:
        from ray.serve import context

        return context._get_serve_request_context().request_id or ""
    except Exception:  # noqa: BLE001 - an id is for the logs only
        return ""


def log_to_serve() -> None:
    """Send lmcot's log lines in this replica to Serve's replica log, at Serve's level and with its
    request fields, so a request id leads to the lines about that request (``lmcot.*`` loggers
    otherwise reach only the worker's stderr, and not below WARNING)."""
    serve_logger, ours = logging.getLogger("ray.serve"), logging.getLogger("lmcot")
    if serve_logger.handlers:
        ours.handlers = list(serve_logger.handlers)
        ours.setLevel(serve_logger.level)
        ours.propagate = False


async def generate(model, call: GenerateCall) -> list:
    """``call`` through the replica's :class:`~lmcot.serving.model_queue.QueuedModel`."""
    return await model.generate(call.prompts, max_new_tokens=call.max_new_tokens, n=call.n,
                                temperature=call.temperature, top_p=call.top_p, timeout_s=call.timeout_s,
                                tag=request_id())


# -- OpenAI choices ------------------------------------------------------------------------------
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
    """OpenAI choices from :meth:`QueuedModel.generate_with_logprobs`: text and tokens cut at the first stop."""
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
