"""A generator behind one :class:`~lmcot.serving.work_queue.WorkQueue`: what every large-LM caller holds.

Serve's model replicas and the refinement judge actors both wrap their generator in a
:class:`QueuedModel`, so the Generator's three operations (``generate``, ``score_yes_no`` and
``generate_with_logprobs``) are batched, fair and failure-isolated the same way everywhere. The
key of a job is the operation plus every setting that must be equal within one model call.

Admission happens here, before any queueing: a prompt over the model's input limit (counted with
the model's own :class:`~lmcot.prompting.fitting.PromptFitter`, chat template and reserve included)
raises :class:`ContextLengthExceeded` at once, with the limit and the count, so the HTTP edge
answers 400 ``context_length_exceeded`` instead of a 500 after a wait.

A generator with a continuous-batching ``engine`` (``generation.engine: continuous``) gets an
:class:`~lmcot.serving.engine_queue.EngineQueue`: its ``generate`` and ``logprobs`` jobs run on the
engine step by step, one engine request per prompt, seeded as the generator's own ``generate`` seeds
them; yes/no scores (one forward pass, nothing to decode) keep the static path.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from lmcot.models.continuous import Request, derive_seed
from lmcot.prompting.fitting import PromptTooLong
from lmcot.serving.engine_queue import EngineQueue
from lmcot.serving.work_queue import QueueLimits, WorkQueue


class ContextLengthExceeded(PromptTooLong):
    """A prompt longer than the model reads: ``tokens`` needed, ``limit`` allowed (OpenAI's ``context_length_exceeded``)."""

    def __init__(self, message: str, limit: int, tokens: int):
        super().__init__(message)
        self.message, self.limit, self.tokens = message, limit, tokens

    def __reduce__(self):  # crosses process boundaries (Ray) with its fields
        return ContextLengthExceeded, (self.message, self.limit, self.tokens)


def admission_fitter(generator):
    """A copy of the generator's fitter with a tokenizer of its own (None without a fitter).

    Why a copy: admission runs on the caller's thread while the model thread encodes batches, and a
    fast tokenizer's padding settings are per instance state that each call sets; shared across two
    threads, one call's ``no padding`` can land inside the other's batch (refinement's judge then fails
    with "expected sequence of length 309 at dim 1 (got 311)")."""
    fitter = getattr(generator, "fitter", None)
    if fitter is None:
        return None
    own = copy.copy(fitter)
    own.tokenizer = copy.deepcopy(fitter.tokenizer)
    return own


def check_fits(fitter, prompts: Sequence[str], reserve: int) -> None:
    """Raise :class:`ContextLengthExceeded` for the first prompt ``fitter`` cannot fit.

    Generators without a fitter (no local tokenizer) are not checked here; their own calls still refuse.
    """
    if fitter is None:
        return
    for prompt in prompts:
        try:
            fitter.fit(prompt, reserve)
        except PromptTooLong:
            render = getattr(prompt, "render", None)
            tokens = fitter.count(fitter.format(render("") if render is not None else prompt))
            budget = fitter.budget(reserve)
            room = f" ({fitter.limit} minus {reserve} for the tokens to generate)" if budget != fitter.limit else ""
            raise ContextLengthExceeded(
                f"this model's maximum context length is {budget} tokens{room}, but the prompt needs {tokens} "
                "tokens; shorten it", budget, tokens) from None


def engine_requests(key: tuple, prompts: Sequence[str]) -> list | None:
    """A ``generate`` or ``logprobs`` job's prompts as continuous-engine requests (None for yes/no scores):
    prompt ``i`` is seeded ``derive_seed(seed, i)``, as :meth:`ContinuousGenerator.generate` seeds it."""
    if key[0] == "generate":
        _, max_new_tokens, n, temperature, top_p, seed = key
        top = None
    elif key[0] == "logprobs":
        _, max_new_tokens, n, temperature, top_p, top = key
        seed = None
    else:
        return None
    base = seed if seed is not None else int(torch.randint(0, 2**62, ()))
    return [Request(p, max_new_tokens, n, temperature, top_p, derive_seed(base, i), top) for i, p in enumerate(prompts)]


def engine_result(handle):
    """A finished engine request as its job's item, as :meth:`QueuedModel._run` gives it: the
    :class:`~lmcot.models.generation.Generation`, or with log-probabilities its samples'
    :class:`~lmcot.models.generation.Scored` and its prompt tokens."""
    if handle.request.logprobs is None:
        return handle.generation
    return handle.scored, len(handle.prompt_ids)


class QueuedModel:
    """``generator``'s operations as coroutines that share one work queue (one model thread)."""

    def __init__(self, generator, limits: QueueLimits, name: str = "lmcot-model"):
        self.generator = generator
        self.fitter = admission_fitter(generator)
        engine = getattr(generator, "engine", None)
        self.queue = (WorkQueue(self._run, limits, name) if engine is None
                      else EngineQueue(self._run, limits, engine, engine_requests, name, result=engine_result))

    def _run(self, key: tuple, items: list) -> list:
        op, *settings = key
        if op == "generate":
            max_new_tokens, n, temperature, top_p, seed = settings
            return self.generator.generate(items, max_new_tokens=max_new_tokens, n=n, temperature=temperature,
                                           top_p=top_p, seed=seed)
        if op == "score":
            return self.generator.score_yes_no(items)
        if op == "logprobs":
            max_new_tokens, n, temperature, top_p, top = settings
            samples, _ = self.generator.generate_with_logprobs(items, max_new_tokens=max_new_tokens, n=n,
                                                               temperature=temperature, top_p=top_p, top=top)
            fitted = self.generator.fit(items, reserve=max_new_tokens)
            return [(samples[i * n:(i + 1) * n], f.tokens) for i, f in enumerate(fitted)]
        raise ValueError(f"unknown model operation {op!r}")

    async def generate(self, prompts: Sequence[str], *, max_new_tokens: int, n: int = 1, temperature: float = 0.0,
                       top_p: float = 1.0, seed: int | None = None, timeout_s: float | None = None,
                       tag: str = "") -> list:
        """``Generator.generate``, merged with other callers' calls of the same settings."""
        if n > 1 and temperature <= 0:
            raise ValueError("n > 1 samples need temperature > 0 (greedy decoding gives one answer)")
        check_fits(self.fitter, prompts, max_new_tokens)
        return await self.queue.run(("generate", max_new_tokens, n, temperature, top_p, seed), prompts, rows=n,
                                    tokens=max_new_tokens, timeout_s=timeout_s, tag=tag)

    async def score_yes_no(self, prompts: Sequence[str], *, timeout_s: float | None = None, tag: str = "") -> list:
        """``Generator.score_yes_no`` (one forward pass per prompt, cost one token), merged."""
        check_fits(self.fitter, prompts, 1)
        return await self.queue.run(("score",), prompts, timeout_s=timeout_s, tag=tag)

    async def generate_with_logprobs(self, prompts: Sequence[str], *, max_new_tokens: int, n: int,
                                     temperature: float, top_p: float, top: int, timeout_s: float | None = None,
                                     tag: str = "") -> list:
        """Per prompt: its ``n`` :class:`~lmcot.models.generation.Scored` samples and its prompt tokens."""
        check_fits(self.fitter, prompts, max_new_tokens)
        return await self.queue.run(("logprobs", max_new_tokens, n, temperature, top_p, top), prompts, rows=n,
                                    tokens=max_new_tokens, timeout_s=timeout_s, tag=tag)

    def stats(self) -> dict:
        return self.queue.stats()
