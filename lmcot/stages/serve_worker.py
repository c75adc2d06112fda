"""The serve graph's model replicas: ``Rationalizer`` (the small LM) and ``Answerer`` (the large LM).

Each replica holds one :class:`~lmcot.serving.model_queue.QueuedModel`: every request it serves,
``/v1/answer`` calls, OpenAI completions with or without logprobs and yes/no scores alike, goes
through that one queue, which merges concurrent requests of equal settings into model calls, serves
long requests in pieces so short ones wait for about one piece, answers every admitted request
within its timeout, and keeps a merged call's failure with the request that caused it (see
:mod:`lmcot.serving.work_queue`). No ``@serve.batch``: the queue merges callers itself, across
operations and settings. With ``generation.engine: continuous`` the generator carries a
continuous-batching engine and the queue feeds it step by step instead of in pieces
(:mod:`lmcot.serving.engine_queue`): a request joins the running batch at the next decoding step
and is answered as soon as it ends.

The request id Serve's proxy gave the HTTP request travels with every call to a model replica
(the ingress keeps Serve's request context in its worker threads), so the queue's log lines about a
request carry the id its error body shows, in the replica's Serve log (:mod:`lmcot.serving.logs`).
A prompt over the model's input limit is returned as a refusal, not raised
(:mod:`lmcot.serving.replica`), so the client's mistake is not logged as a failed request.
"""

from __future__ import annotations

from ray import serve

from lmcot.config import Config
from lmcot.models.factory import make_generator
from lmcot.models.generation import Generation
from lmcot.serving import openai_api
from lmcot.serving.logs import log_to_serve
from lmcot.serving.model_queue import QueuedModel
from lmcot.serving.replica import GenerateCall, Refused, generate, queue_limits, refusing


def request_id() -> str:
    """The id of the HTTP request this replica call serves ('' outside a request)."""
    try:
        from ray.serve import context

        return context._get_serve_request_context().request_id or ""
    except Exception:  # noqa: BLE001 - an id is for the logs only
        return ""


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Rationalizer:
    """The small LM: k sampled rationales per request; concurrent requests share model calls (work queue)."""

    def __init__(self, cfg: Config):
        log_to_serve()
        self.model = QueuedModel(make_generator(cfg.small, cfg.generation),
                                 queue_limits(cfg, cfg.serve.rationalizer), name="lmcot-small")

    async def generate(self, call: GenerateCall) -> list[Generation] | Refused:
        rid = request_id()
        return await refusing(generate(self.model, call, rid), rid)

    def stats(self) -> dict:
        return self.model.stats()


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Answerer:
    """The frozen large LM: greedy answers, yes/no scores and OpenAI completions, all through one work queue."""

    def __init__(self, cfg: Config):
        log_to_serve()
        self.model = QueuedModel(make_generator(cfg.large, cfg.generation),
                                 queue_limits(cfg, cfg.serve.answerer), name="lmcot-large")

    async def generate(self, call: GenerateCall) -> list[Generation] | Refused:
        rid = request_id()
        return await refusing(generate(self.model, call, rid), rid)

    async def score_yes_no(self, prompts: tuple[str, ...], timeout_s: float | None = None) -> list[float] | Refused:
        rid = request_id()
        return await refusing(self.model.score_yes_no(prompts, timeout_s=timeout_s, tag=rid), rid)

    def stats(self) -> dict:
        """Model calls run, requests served and items dropped (callers gone) since the replica started."""
        return self.model.stats()

    async def complete(self, call: dict) -> dict | Refused:
        """An OpenAI completion call (:func:`lmcot.serving.openai_api.completion_call`): choices and token counts.

        With or without logprobs it is one job of the replica's work queue, so a long request runs
        in pieces between other requests' calls, and a cancelled one stops after the running piece.
        """
        rid = request_id()
        return await refusing(self._complete(call, rid), rid)

    async def _complete(self, call: dict, rid: str) -> dict:
        prompts, n, stops, max_tokens = call["prompts"], call["n"], call["stop"], call["max_tokens"]
        if call["top_logprobs"] is not None:
            per_prompt = await self.model.generate_with_logprobs(
                prompts, max_new_tokens=max_tokens, n=n, temperature=call["temperature"], top_p=call["top_p"],
                top=call["top_logprobs"], timeout_s=call.get("timeout_s"), tag=rid)
            return openai_api.logprob_choices(per_prompt, stops)
        gens = await generate(self.model, GenerateCall(tuple(prompts), max_tokens, n, call["temperature"],
                                                       call["top_p"], timeout_s=call.get("timeout_s")), rid)
        return openai_api.text_choices(gens, max_tokens, n, stops)
