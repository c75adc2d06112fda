"""Serving LM-guided CoT with Ray Serve: HTTP -> ingress -> small LM (k rationales) -> large LM -> vote.

Three deployments, each with its own replicas and resources (``serve.*`` config):

- ``Rationalizer``: the small LM. A request's k rationales are one sampled call
  (``n=k``), and the replica's work queue merges concurrent requests into one model call.
- ``Answerer``: the large LM. Its work queue merges the answer prompts of concurrent
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
  a prompt over the model's input limit is counted with the model's own fitter in the
  replica before any queueing and answered 400 ``context_length_exceeded`` naming the field;
  every deployment bounds its queue (``max_queued_requests``) and answers 503 with
  ``Retry-After`` when it is full.
- *One work queue per model replica* (:mod:`lmcot.serving.work_queue`, via
  :mod:`lmcot.stages.serve_worker`): concurrent requests share model calls; long requests run in
  pieces, so short ones wait for about one piece; a piece's wait is bounded (``serve.queue_aging_s``),
  so large allowed requests are answered too; a merged call that fails is retried caller by
  caller, and a request whose client timed out or went away leaves the queue, so only the request
  that caused a failure or timeout gets it.
- *Clean failures.* Every error is JSON in one shape with a request id and no internals, and the
  same id is in the log line that explains it, in the ingress and the model replicas
  (``lmcot.stages.serve_http``); a lost replica answers 503 with ``Retry-After`` (the health-check
  period). Hostile headers and slow bodies are handled at the edge (``lmcot.serving.edges``).

The OpenAI routes live on the ingress (one application, one copy of the large LM,
one auth and limit policy) and forward to the Answerer's ``complete`` method.
Adaptive self-consistency samples in rounds and stops once
``lmcot.inference.method.vote_is_settled`` says the remaining samples cannot change the vote.

Deploy with ``serve deploy serve_configs/lmcot.cpu.yaml`` (args: see :class:`AppArgs`) or
from Python with ``serve.run(build_app({...}))``. No ``from __future__ import
annotations`` here: Serve reads ``build_app``'s parameter annotation to parse its args.
"""

import asyncio
import contextvars
import dataclasses
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import Request
from fastapi.openapi.docs import get_swagger_ui_html
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException

from lmcot.inference import method as methods
from lmcot.config import Config, ConfigError, from_dict, resolve_config_path, to_dict
from lmcot.config.loader import apply_overrides, overlay, read_yaml
from lmcot.models.factory import make_generator
from lmcot.models.generation import Generation
from lmcot.inference.method import Question, majority_vote, run_method, vote_is_settled
from lmcot.models.loading import context_tokenizer
from lmcot.stages import serve_http as http
from lmcot.serving.edges import SlowReaders, printable
from lmcot.prompting.fitting import PromptTooLong
from lmcot.serving.model_queue import QueuedModel
from lmcot.stages import serve_worker as worker
from lmcot.stages.serve_worker import GenerateCall

log = logging.getLogger(__name__)
OPENAI_PREFIX = http.OPENAI_PREFIX


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
                except TimeoutError as exc:
                    if isinstance(exc, RayTaskError):  # the replica's own timeout, not the poll's
                        raise
                    continue
        except (TimeoutError, asyncio.CancelledError):
            response.cancel()
            raise

    def _remaining(self) -> float:
        if self.cancelled.is_set():
            raise asyncio.CancelledError
        return max(0.0, self.deadline - time.monotonic())

    def generate(self, prompts, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=None):
        call = GenerateCall(tuple(prompts), max_new_tokens, n, temperature, top_p, timeout_s=self._remaining())
        return self._wait(self.handle.generate.remote(call))

    def score_yes_no(self, prompts):
        return self._wait(self.handle.score_yes_no.remote(tuple(prompts), self._remaining()))


# -- model deployments -------------------------------------------------------------------------
@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Rationalizer:
    """The small LM: k sampled rationales per request; concurrent requests share model calls (work queue)."""

    def __init__(self, cfg: Config):
        worker.log_to_serve()
        self.model = QueuedModel(make_generator(cfg.small, cfg.generation),
                                 worker.queue_limits(cfg, cfg.serve.rationalizer), name="lmcot-small")

    async def generate(self, call: GenerateCall) -> list[Generation]:
        return await worker.generate(self.model, call)

    def stats(self) -> dict:
        return self.model.stats()


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Answerer:
    """The frozen large LM: greedy answers, yes/no scores and OpenAI completions, all through one work queue."""

    def __init__(self, cfg: Config):
        worker.log_to_serve()
        self.model = QueuedModel(make_generator(cfg.large, cfg.generation),
                                 worker.queue_limits(cfg, cfg.serve.answerer), name="lmcot-large")

    async def generate(self, call: GenerateCall) -> list[Generation]:
        return await worker.generate(self.model, call)

    async def score_yes_no(self, prompts: tuple[str, ...], timeout_s: float | None = None) -> list[float]:
        return await self.model.score_yes_no(prompts, timeout_s=timeout_s, tag=worker.request_id())

    def stats(self) -> dict:
        """Model calls run, requests served and items dropped (callers gone) since the replica started."""
        return self.model.stats()

    async def complete(self, call: dict) -> dict:
        """An OpenAI completion call (see ``serve_http.completion_call``): choices and token counts.

        With or without logprobs it is one job of the replica's work queue, so a long request runs
        in pieces between other requests' calls, and a cancelled one stops after the running piece.
        """
        prompts, n, stops, max_tokens = call["prompts"], call["n"], call["stop"], call["max_tokens"]
        if call["top_logprobs"] is not None:
            per_prompt = await self.model.generate_with_logprobs(
                prompts, max_new_tokens=max_tokens, n=n, temperature=call["temperature"], top_p=call["top_p"],
                top=call["top_logprobs"], timeout_s=call.get("timeout_s"), tag=worker.request_id())
            return worker.logprob_choices(per_prompt, stops)
        gens = await self.generate(GenerateCall(tuple(prompts), max_tokens, n, call["temperature"], call["top_p"],
                                                timeout_s=call.get("timeout_s")))
        return worker.text_choices(gens, max_tokens, n, stops)


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


def _as_api_error(exc: Exception, timeout_s: float, param: str, retry_after_s: int) -> http.ApiError:
    """Map a failure behind the ingress to a status: 400 prompt too long (naming ``param``), 504 timeout,
    503 unavailable or full, 500 otherwise.

    Messages never carry the exception's text (it holds pids, addresses, actor ids); the server
    log has it, under the request id in the error body (see ``serve_http.error_response``).
    A model replica's exception arrives wrapped by Ray (``RayTaskError``, also an instance of its
    cause), so a replica's ``ContextLengthExceeded`` or queue timeout maps like a local one.
    """
    if isinstance(exc, http.ApiError):
        return exc
    cause = getattr(exc, "cause", None) if isinstance(exc, RayTaskError) else None
    if isinstance(cause or exc, PromptTooLong):
        return http.context_length_error(cause or exc, param)
    if isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError):
        return http.ApiError(504, f"the request took longer than {timeout_s:g}s (serve.request_timeout_s); "
                                  "send a smaller one or retry later", code="timeout")
    if isinstance(exc, _UNAVAILABLE) or (isinstance(exc, RayServeException) and "unavailable" in str(exc).lower()):
        log.warning("model replica unavailable: %s", exc)
        if isinstance(exc, BackPressureError):
            return http.ApiError(503, "a model replica is at capacity; retry after the Retry-After delay",
                                 headers={"Retry-After": str(http.RETRY_AFTER_S)}, code="service_unavailable")
        return http.ApiError(503, "a model replica is being replaced; retry after the Retry-After delay",
                             headers={"Retry-After": str(retry_after_s)}, code="service_unavailable")
    log.error("request %s failed", worker.request_id() or "-", exc_info=exc)
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
        worker.log_to_serve()
        self.cfg = cfg
        self.limits = cfg.serve
        self.token = _auth_token(cfg)
        self.rationalizer, self.answerer = rationalizer, answerer
        self.pool = ThreadPoolExecutor(cfg.serve.ingress.max_ongoing_requests, thread_name_prefix="lmcot-ingress")
        self.slow = SlowReaders(cfg.serve.max_slow_body_readers)
        # a lost model replica is replaced within its health-check period: the 503's Retry-After
        self.retry_after_s = math.ceil(max(cfg.serve.answerer.health_check_period_s,
                                           cfg.serve.rationalizer.health_check_period_s))
        # Contexts are fitted to the large LM's token budget (None: API backends cut by characters).
        self.tokenizer = context_tokenizer(cfg.large) if cfg.data.context_max_tokens > 0 else None

    # -- routes ----------------------------------------------------------------------------
    @api.api_route("/healthz", methods=["GET", "HEAD"])
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
        req = http.parse(http.AnswerRequest, await http.read_body(request, self.limits, self.slow), self.limits)
        k, method, temperature, adaptive = req.resolved(self.limits, self.cfg.generation.temperature)
        gen = self.cfg.generation
        http.check_budget(self.limits, "k", 422, k=k,
                          new_tokens=gen.rationale_max_new_tokens + gen.answer_max_new_tokens)
        start = time.perf_counter()
        result = await self._in_thread("question", self._answer, req, k, method, temperature, adaptive)
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
        body = await http.read_body(request, self.limits, self.slow)
        req = http.parse(http.CompletionRequest, body, self.limits, status=400)
        call = self._openai_call(req, req.prompt, req.logprobs)
        return http.completion_response(self.cfg.large.name_or_path, await self._complete(call, "prompt"))

    @api.post(f"{OPENAI_PREFIX}/chat/completions")
    async def chat_completions(self, request: Request) -> dict:
        http.check_bearer(request, self.token)
        body = await http.read_body(request, self.limits, self.slow)
        req = http.parse(http.ChatCompletionRequest, body, self.limits, status=400)
        top = (req.top_logprobs or 0) if req.logprobs else None
        call = self._openai_call(req, [http.chat_prompt(req.messages)], top)
        return http.chat_response(self.cfg.large.name_or_path, await self._complete(call, "messages"))

    # -- helpers ---------------------------------------------------------------------------
    def _check_model(self, model: str) -> None:
        if model != self.cfg.large.name_or_path:
            raise http.ApiError(404, f"The model `{printable(model)}` does not exist or you do not have access to it; this "
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

    async def _complete(self, call: dict, param: str) -> dict:
        response = self.answerer.complete.remote({**call, "timeout_s": self.limits.request_timeout_s})

        async def result():
            return await response

        try:
            return await asyncio.wait_for(result(), self.limits.request_timeout_s)
        except BaseException as exc:  # timeout or client gone: stop the model work too
            if isinstance(exc, (asyncio.TimeoutError, asyncio.CancelledError)):
                response.cancel()
            if isinstance(exc, Exception):
                raise _as_api_error(exc, self.limits.request_timeout_s, param, self.retry_after_s) from None
            raise

    async def _in_thread(self, param: str, fn, *args):
        """``fn(small, large, *args)`` in the pool, with this request's Serve context (its request id
        then travels with every model call the thread makes) and the request's deadline."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.limits.request_timeout_s
        small, large = HandleGenerator(self.rationalizer, deadline), HandleGenerator(self.answerer, deadline)
        context = contextvars.copy_context()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self.pool, context.run, fn, small, large, *args),
                                          self.limits.request_timeout_s)
        except BaseException as exc:  # timeout or client gone: the worker thread stops at its next call
            small.cancel()
            large.cancel()
            if isinstance(exc, Exception):
                raise _as_api_error(exc, self.limits.request_timeout_s, param, self.retry_after_s) from None
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
