"""Serving LM-guided CoT with Ray Serve: HTTP -> ingress -> small LM (k rationales) -> large LM -> vote.

Three deployments, each with its own replicas and resources (``serve.*`` config):

- ``Rationalizer``: the small LM. A request's k rationales are one sampled call
  (``n=k``), and ``@serve.batch`` merges concurrent requests into one model call.
- ``Answerer``: the large LM. ``@serve.batch`` merges the answer prompts of concurrent
  requests; it also runs the OpenAI-compatible ``/openai/v1/completions`` and
  ``/openai/v1/chat/completions`` (with ``logprobs`` for yes/no judging), so other
  tools, lmcot's own ``backend: openai`` included, can use the large LM as a black box.
- ``Ingress``: FastAPI. ``POST /v1/answer``, ``GET /healthz``, ``GET /v1/models`` and the
  OpenAI routes under ``/openai/v1``. It validates, authenticates and limits every
  request (``lmcot.stages.serve_http``), then runs the *core* method functions
  (``lmcot.inference.method.run_method``) over thin Generator adapters of the two deployment
  handles, so the serving path and ``lmcot eval`` share one implementation of each method.

One bad client cannot hurt the others:

- *Admission.* Sampling settings the model cannot sample with (a temperature of 1e-40)
  are refused with a 4xx naming the field; each request's worst-case cost (prompts x
  samples x new tokens) is checked against ``serve.max_request_tokens`` before it runs;
  every deployment bounds its queue (``max_queued_requests``) and answers 503 with
  ``Retry-After`` when it is full.
- *Isolation.* A merged batch that fails is retried caller by caller
  (:func:`lmcot.stages.serve_worker.generate_batch`), so only the request that caused it fails.
- *Fair turns and cancellation.* Model work runs on one thread per replica in chunks of
  one model batch (:class:`lmcot.stages.serve_worker.ModelWorker`), so short requests are served between the chunks
  of long ones; a request whose client timed out or went away is cancelled in the model
  replica and its remaining chunks are dropped.
- *Clean failures.* Every error is JSON in one shape with a request id and no internals
  (``lmcot.stages.serve_http``); a lost replica answers 503 with ``Retry-After``.

The OpenAI routes live on the ingress (one application, one copy of the large LM,
one auth and limit policy) and forward to the Answerer's ``complete`` method.
Adaptive self-consistency samples in rounds and stops once
``lmcot.inference.method.vote_is_settled`` says the remaining samples cannot change the vote.

Deploy with ``serve deploy serve_configs/lmcot.cpu.yaml`` (args: see :class:`AppArgs`) or
from Python with ``serve.run(build_app({...}))``. No ``from __future__ import
annotations`` here: Serve reads ``build_app``'s parameter annotation to parse its args.
"""

import asyncio
import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import Request
from fastapi.openapi.docs import get_swagger_ui_html
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException

from lmcot.inference import method as methods
from lmcot.config import Config, ConfigError, from_dict, resolve_config_path, to_dict
from lmcot.config.loader import apply_overrides, overlay, read_yaml
from lmcot.models.factory import make_generator
from lmcot.models.generation import Generation, HFGenerator
from lmcot.inference.method import Question, majority_vote, run_method, vote_is_settled
from lmcot.models.loading import context_tokenizer
from lmcot.stages import serve_http as http
from lmcot.stages.serve_worker import GenerateCall, ModelWorker, Ticket, call_batched, generate_batch

log = logging.getLogger(__name__)
OPENAI_PREFIX = http.OPENAI_PREFIX


def _configure_batching(batched_method, spec) -> None:
    batched_method.set_max_batch_size(spec.max_batch_size)
    batched_method.set_batch_wait_timeout_s(spec.batch_wait_timeout_s)


class HandleGenerator:
    """The :class:`~lmcot.models.generation.Generator` Protocol over a model deployment's handle.

    Lets the ingress run ``lmcot.inference.method`` unchanged. It blocks, so it is called from a
    worker thread, never the replica's event loop. Every call stops at ``deadline``
    (``time.monotonic()``) or once :meth:`cancel` is called (the client went away), and
    cancels its request in the model replica, which then drops its remaining chunks.
    Seeds are not forwarded: calls of different requests share one batched model call,
    and adaptive rounds must draw fresh samples.
    """

    POLL_S = 0.2

    def __init__(self, handle, deadline: float):
        self.handle = handle
        self.deadline = deadline
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def _wait(self, response):
        try:
            while True:
                if self.cancelled.is_set():
                    raise asyncio.CancelledError
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                try:
                    return response.result(timeout_s=min(remaining, self.POLL_S))
                except TimeoutError:
                    continue
        except (TimeoutError, asyncio.CancelledError):
            response.cancel()
            raise

    def generate(self, prompts, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=None):
        if self.cancelled.is_set():
            raise asyncio.CancelledError
        call = GenerateCall(tuple(prompts), max_new_tokens, n, temperature, top_p)
        return self._wait(self.handle.generate.remote(call))

    def score_yes_no(self, prompts):
        if self.cancelled.is_set():
            raise asyncio.CancelledError
        return self._wait(self.handle.score_yes_no.remote(tuple(prompts)))


def trim_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` cut before the first stop sequence, and whether one was found.

    >>> trim_at_stop("Paris. Question: x", ["Question:", "\\n"])
    ('Paris. ', True)
    """
    cuts = [text.find(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def logprob_completions(gen: HFGenerator, prompts: list[str], *, max_new_tokens: int, n: int,
                        temperature: float, top_p: float, top: int, stops: list[str]) -> dict:
    """OpenAI completion choices with ``logprobs``, from :meth:`HFGenerator.generate_with_logprobs`."""
    samples, prompt_tokens = gen.generate_with_logprobs(prompts, max_new_tokens=max_new_tokens, n=n,
                                                        temperature=temperature, top_p=top_p, top=top)
    choices = []
    for s in samples:
        text, stopped = trim_at_stop(s.text, stops)
        choices.append({
            "text": text,
            "finish_reason": "stop" if stopped or s.ended else "length",
            "logprobs": {"tokens": s.tokens, "token_logprobs": s.token_logprobs, "top_logprobs": s.top_logprobs},
        })
    return {"choices": choices, "prompt_tokens": prompt_tokens,
            "completion_tokens": sum(s.completion_tokens for s in samples)}


# -- model deployments -------------------------------------------------------------------------
MAX_CONCURRENT_BATCHES = 4
"""Merged batches a model replica works on at once. Their chunks share the replica's one
:class:`ModelWorker` thread in turn, so a batch of short requests that forms while a long one
runs is served between its chunks instead of after it."""


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Rationalizer:
    """The small LM: k sampled rationales per request, concurrent requests batched into one call."""

    def __init__(self, cfg: Config):
        self.worker = ModelWorker(make_generator(cfg.small, cfg.generation), cfg.generation.batch_size,
                                  cfg.serve.max_chunk_tokens)
        _configure_batching(self._generate, cfg.serve.rationalizer)

    async def generate(self, call: GenerateCall) -> list[Generation]:
        return await call_batched(self._generate, call)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002, max_concurrent_batches=MAX_CONCURRENT_BATCHES)
    async def _generate(self, tickets: list[Ticket]) -> list:
        return await generate_batch(self.worker, tickets)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Answerer:
    """The frozen large LM: batched greedy answers, yes/no scores and OpenAI-style completions."""

    def __init__(self, cfg: Config):
        self.worker = ModelWorker(make_generator(cfg.large, cfg.generation), cfg.generation.batch_size,
                                  cfg.serve.max_chunk_tokens)
        self.generator = self.worker.generator
        _configure_batching(self._generate, cfg.serve.answerer)
        _configure_batching(self.score_yes_no, cfg.serve.answerer)

    async def generate(self, call: GenerateCall) -> list[Generation]:
        return await call_batched(self._generate, call)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002, max_concurrent_batches=MAX_CONCURRENT_BATCHES)
    async def _generate(self, tickets: list[Ticket]) -> list:
        return await generate_batch(self.worker, tickets)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002, max_concurrent_batches=MAX_CONCURRENT_BATCHES)
    async def score_yes_no(self, prompt_lists: list[tuple[str, ...]]) -> list[list[float]]:
        flat = [p for prompts in prompt_lists for p in prompts]
        scores = []
        size = self.worker.prompts_per_chunk(1, 1)
        for start in range(0, len(flat), size):
            chunk = flat[start:start + size]
            scores += await self.worker.run(len(chunk), self.generator.score_yes_no, chunk)
        scores = iter(scores)
        return [[next(scores) for _ in prompts] for prompts in prompt_lists]

    def stats(self) -> dict:
        """Model chunks run and dropped (cancelled callers) since the replica started."""
        return self.worker.stats()

    async def complete(self, call: dict) -> dict:
        """An OpenAI completion call (see ``serve_http.completion_call``): choices and token counts.

        Without logprobs it joins the batched ``generate`` path; with them it runs its own
        forward passes that keep every step's logits (:func:`logprob_completions`), one
        chunk of prompts at a time, so a cancelled request stops at the next chunk.
        """
        prompts, n, stops = call["prompts"], call["n"], call["stop"]
        if call["top_logprobs"] is not None:
            size = self.worker.prompts_per_chunk(n, call["max_tokens"])
            starts = range(0, len(prompts), size)
            result = {"choices": [], "prompt_tokens": 0, "completion_tokens": 0}
            for done, start in enumerate(starts):
                try:
                    part = await self.worker.run(
                        len(prompts[start:start + size]) * n * call["max_tokens"], logprob_completions, self.generator, prompts[start:start + size],
                        max_new_tokens=call["max_tokens"], n=n, temperature=call["temperature"],
                        top_p=call["top_p"], top=call["top_logprobs"], stops=stops,
                    )
                except asyncio.CancelledError:
                    self.worker.dropped += len(starts) - done - 1
                    raise
                result["choices"] += part["choices"]
                result["prompt_tokens"] += part["prompt_tokens"]
                result["completion_tokens"] += part["completion_tokens"]
            return result
        gens = await self.generate(GenerateCall(
            tuple(prompts), call["max_tokens"], n, call["temperature"], call["top_p"]))
        choices = []
        for g in gens:
            full = g.completion_tokens >= call["max_tokens"] * n
            for text in g.texts:
                text, stopped = trim_at_stop(text, stops)
                choices.append({"text": text, "logprobs": None,
                                "finish_reason": "length" if full and not stopped else "stop"})
        return {"choices": choices, "prompt_tokens": sum(g.prompt_tokens for g in gens),
                "completion_tokens": sum(g.completion_tokens for g in gens)}


# -- the ingress ---------------------------------------------------------------------------------
api = http.new_api()

_UNAVAILABLE = (RayActorError, BackPressureError, DeploymentUnavailableError)


def round_sizes(k: int, adaptive: bool, round_size: int) -> list[int]:
    """Samples per round: all k at once, or rounds of ``round_size`` (a last round of one joins the one before).

    >>> round_sizes(5, False, 2), round_sizes(5, True, 2), round_sizes(6, True, 2), round_sizes(3, True, 2)
    ([5], [2, 3], [2, 2, 2], [3])
    """
    if not adaptive or k <= round_size:
        return [k]
    sizes = [round_size] * (k // round_size) + ([k % round_size] if k % round_size else [])
    if sizes[-1] == 1:
        sizes[-2:] = [sizes[-2] + 1]
    return sizes


def merge_results(a: methods.MethodResult, b: methods.MethodResult) -> methods.MethodResult:
    """Two rounds of one question as one result, re-voted over all answers."""
    answers = a.answers + b.answers
    answer, votes = majority_vote(answers)
    usage = {role: dataclasses.replace(u).add(b.usage[role]) for role, u in a.usage.items()}
    return methods.MethodResult(a.id, answer, votes, a.rationales + b.rationales, answers, usage)


def _as_api_error(exc: Exception, timeout_s: float) -> http.ApiError:
    """Map a failure behind the ingress to a status: 504 timeout, 503 unavailable or full, 500 otherwise.

    Messages never carry the exception's text (it holds pids, addresses, actor ids); the
    server log has it, under the request id Serve logs with every line.
    """
    if isinstance(exc, http.ApiError):
        return exc
    if isinstance(exc, TimeoutError):
        return http.ApiError(504, f"the request took longer than {timeout_s:g}s (serve.request_timeout_s); "
                                  "send a smaller one or retry later", code="timeout")
    if isinstance(exc, _UNAVAILABLE) or (isinstance(exc, RayServeException) and "unavailable" in str(exc).lower()):
        log.warning("model replica unavailable: %s", exc)
        what = "full" if isinstance(exc, BackPressureError) else "being replaced"
        return http.ApiError(503, f"a model replica is {what}; retry after the Retry-After delay",
                             headers={"Retry-After": str(http.RETRY_AFTER_S)}, code="service_unavailable")
    log.error("request failed", exc_info=exc)
    return http.ApiError(500, "internal error; the server log has the details under this request's id",
                         code="internal_error")


def _auth_token(cfg: Config) -> str:
    """The bearer token from ``$<serve.auth_token_env>``; '' when auth is off. Missing token: ConfigError."""
    name = cfg.serve.auth_token_env
    if not name:
        return ""
    token = os.environ.get(name, "")
    if not token:
        raise ConfigError(
            f"serve.auth_token_env={name!r} but ${name} is empty or unset: export it where the cluster runs "
            "(before `ray start`) or set serve.auth_token_env to '' to serve without auth"
        )
    return token


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Ingress:
    """HTTP front: validation, auth and limits, then the core method over the two LM deployments.

    It keeps nothing a replacement replica lacks: the config, the token (read from the
    environment) and the handles are all it holds, so a lost ingress replica is simply
    replaced and clients retry (the proxy answers its in-flight requests 503, see
    ``serve_http.proxy_middlewares``).
    """

    def __init__(self, cfg: Config, rationalizer, answerer):
        self.cfg = cfg
        self.limits = cfg.serve
        self.token = _auth_token(cfg)
        self.rationalizer, self.answerer = rationalizer, answerer
        self.pool = ThreadPoolExecutor(cfg.serve.ingress.max_ongoing_requests, thread_name_prefix="lmcot-ingress")
        # Contexts are fitted to the large LM's token budget (None: API backends cut by characters).
        self.tokenizer = context_tokenizer(cfg.large) if cfg.data.context_max_tokens > 0 else None

    # -- routes ----------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> dict:
        http.check_bearer(request, self.token)
        return api.openapi()

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request):
        http.check_bearer(request, self.token)
        return get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title="lmcot")

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        http.check_bearer(request, self.token)
        return http.models_body([(self.cfg.small.name_or_path, "rationalizer"), (self.cfg.large.name_or_path, "answerer")])

    @api.post("/v1/answer")
    async def answer(self, request: Request) -> dict:
        http.check_bearer(request, self.token)
        req = http.parse(http.AnswerRequest, await http.read_body(request, self.limits.max_body_bytes), self.limits)
        k, method, temperature, adaptive = req.resolved(self.limits, self.cfg.generation.temperature)
        gen = self.cfg.generation
        http.check_budget(self.limits, "k", 422, k=k,
                          new_tokens=gen.rationale_max_new_tokens + gen.answer_max_new_tokens)
        start = time.perf_counter()
        result = await self._in_thread(self._answer, req, k, method, temperature, adaptive)
        return {
            "answer": result.answer, "votes": result.votes, "rationales": result.rationales,
            "answers": result.answers, "method": method, "k": k, "samples": len(result.answers),
            "usage": {role: u.as_dict() for role, u in result.usage.items()},
            "latency_ms": round(1000 * (time.perf_counter() - start), 1),
        }

    @api.get(f"{OPENAI_PREFIX}/models")
    async def openai_models(self, request: Request) -> dict:
        http.check_bearer(request, self.token)
        return http.models_body([(self.cfg.large.name_or_path, "answerer")])

    @api.get(OPENAI_PREFIX + "/models/{model_id:path}")
    async def openai_model(self, model_id: str, request: Request) -> dict:
        http.check_bearer(request, self.token)
        self._check_model(model_id)
        return http.models_body([(self.cfg.large.name_or_path, "answerer")])["data"][0]

    @api.post(f"{OPENAI_PREFIX}/completions")
    async def completions(self, request: Request) -> dict:
        http.check_bearer(request, self.token)
        body = await http.read_body(request, self.limits.max_body_bytes)
        req = http.parse(http.CompletionRequest, body, self.limits, status=400)
        call = self._openai_call(req, req.prompt, req.logprobs)
        return http.completion_response(self.cfg.large.name_or_path, await self._complete(call))

    @api.post(f"{OPENAI_PREFIX}/chat/completions")
    async def chat_completions(self, request: Request) -> dict:
        http.check_bearer(request, self.token)
        body = await http.read_body(request, self.limits.max_body_bytes)
        req = http.parse(http.ChatCompletionRequest, body, self.limits, status=400)
        top = (req.top_logprobs or 0) if req.logprobs else None
        call = self._openai_call(req, [http.chat_prompt(req.messages)], top)
        return http.chat_response(self.cfg.large.name_or_path, await self._complete(call))

    # -- helpers ---------------------------------------------------------------------------
    def _check_model(self, model: str) -> None:
        if model != self.cfg.large.name_or_path:
            raise http.ApiError(404, f"The model `{model}` does not exist or you do not have access to it; this "
                                     f"server has {self.cfg.large.name_or_path!r} (GET {OPENAI_PREFIX}/models)",
                                "model", code="model_not_found")

    def _openai_call(self, req, prompts: list[str], top: int | None) -> dict:
        if req.model:
            self._check_model(req.model)
        if top is not None and self.cfg.large.backend != "hf":
            raise http.ApiError(400, f"logprobs: not available for large.backend={self.cfg.large.backend}", "logprobs")
        call = http.completion_call(req, prompts, top, default_max_tokens=16)
        http.check_budget(self.limits, "max_tokens", 400, prompts=len(prompts), n=call["n"],
                          max_tokens=call["max_tokens"])
        return call

    async def _complete(self, call: dict) -> dict:
        response = self.answerer.complete.remote(call)

        async def result():
            return await response

        try:
            return await asyncio.wait_for(result(), self.limits.request_timeout_s)
        except BaseException as exc:  # timeout or client gone: stop the model work too
            if isinstance(exc, (asyncio.TimeoutError, asyncio.CancelledError)):
                response.cancel()
            if isinstance(exc, Exception):
                raise _as_api_error(exc, self.limits.request_timeout_s) from None
            raise

    async def _in_thread(self, fn, *args):
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.limits.request_timeout_s
        small, large = HandleGenerator(self.rationalizer, deadline), HandleGenerator(self.answerer, deadline)
        try:
            return await asyncio.wait_for(loop.run_in_executor(self.pool, fn, small, large, *args),
                                          self.limits.request_timeout_s)
        except BaseException as exc:  # timeout or client gone: the worker thread stops at its next call
            small.cancel()
            large.cancel()
            if isinstance(exc, Exception):
                raise _as_api_error(exc, self.limits.request_timeout_s) from None
            raise

    def _answer(self, small: HandleGenerator, large: HandleGenerator, req, k: int, method: str, temperature: float,
                adaptive: bool):
        """Run the core method in rounds (one round unless adaptive); stop once the vote is settled."""
        gen = dataclasses.replace(self.cfg.generation, temperature=temperature)
        context = http.context_text(req.context, self.tokenizer, self.cfg.data.context_max_tokens)
        question = Question("request", req.question, context)
        sizes = round_sizes(k, adaptive, self.limits.adaptive_round_size)
        result = None
        for i, size in enumerate(sizes):
            r = run_method(method, [question], small=small, large=large, gen=gen, k=size)[0]
            result = r if result is None else merge_results(result, r)
            remaining = sum(sizes[i + 1:])
            if remaining and vote_is_settled(result.votes, remaining):
                break
        return result


# -- application builder -------------------------------------------------------------------------
class AppArgs(BaseModel):
    """``args:`` of a Serve config application: a preset, config sections laid over it, dotted overrides.

    ``{"config": "tiny", "serve": {"max_k": 8}, "set": ["generation.temperature=0.9"]}``: ``config``
    is a preset name (``tiny``, ``paper``, ``qwen``) or an absolute YAML path; any other key is a
    config section (``small``, ``large``, ``generation``, ``data``, ``serve``...) merged over it;
    ``set`` applies ``section.field=value`` overrides last. Unknown keys fail with a suggestion.
    """

    model_config = ConfigDict(extra="allow")

    config: str = "tiny"
    set: list[str] = []


def config_from_args(args: AppArgs | dict) -> Config:
    """The validated :class:`~lmcot.config.Config` that ``args`` describe (ConfigError naming the key)."""
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args)
    path = resolve_config_path(args.config)
    raw = overlay(Config, to_dict(Config()), read_yaml(path))
    raw = overlay(Config, raw, dict(args.model_extra or {}))
    source = f"{path} + serve args"
    try:
        apply_overrides(raw, list(args.set))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return from_dict(raw, source)


def graph(cfg: Config):
    """The bound application: Ingress over Rationalizer and Answerer, each with its ``serve.*`` resources."""
    s = cfg.serve
    rationalizer = Rationalizer.options(**s.rationalizer.deployment_options(cfg.small.placement())).bind(cfg)
    answerer = Answerer.options(**s.answerer.deployment_options(cfg.large.placement())).bind(cfg)
    return Ingress.options(**s.ingress.deployment_options()).bind(cfg, rationalizer, answerer)


def build_app(args: AppArgs):
    """Serve's typed application builder (``import_path: lmcot.stages.serve:build_app``).

    The config is fully validated, and the auth token checked, before any replica starts.
    """
    cfg = config_from_args(args)
    _auth_token(cfg)
    return graph(cfg)


def run(cfg: Config, run_dir=None, block: bool | None = None) -> dict:
    """Deploy the graph on the current Ray cluster and return its URLs.

    With ``RAY_ADDRESS`` set the application is deployed to that cluster and outlives
    this call. Without it a local cluster is started here, Serve listens on
    127.0.0.1:8000, and (``block`` defaults to True then) the call serves until Ctrl-C.
    """
    from lmcot.stages.cluster import ensure_ray

    _auth_token(cfg)
    remote = bool(os.environ.get("RAY_ADDRESS"))
    if not remote:  # the local cluster's HTTP proxy answers its own errors in lmcot's JSON shape
        os.environ.setdefault(*http.PROXY_CALLBACK)
    ensure_ray()
    if not remote:
        serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(graph(cfg), name="lmcot", route_prefix="/")
    url = "http://127.0.0.1:8000"
    summary = {"app": "lmcot", "answer_url": f"{url}/v1/answer", "openai_base_url": f"{url}{OPENAI_PREFIX}",
               "models": {"small": cfg.small.name_or_path, "large": cfg.large.name_or_path}}
    if block if block is not None else not remote:
        log.warning("serving %s until Ctrl-C", summary)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return summary
