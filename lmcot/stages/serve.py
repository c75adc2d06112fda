"""Serving LM-guided CoT with Ray Serve: HTTP -> ingress -> small LM (k rationales) -> large LM -> vote.

Three deployments, each with its own replicas and resources (``serve.*`` config):

- ``Rationalizer``: the small LM. A request's k rationales are one sampled call
  (``n=k``), and the replica's work queue merges concurrent requests into one model call.
- ``Answerer``: the large LM. Its work queue merges the answer prompts of concurrent
  requests; it also runs the OpenAI-compatible ``/openai/v1/completions`` and
  ``/openai/v1/chat/completions`` (with ``logprobs`` for yes/no judging), so other
  tools, lmcot's own ``backend: openai`` included, can use the large LM as a black box.
- ``Ingress`` (this module): FastAPI. ``POST /v1/answer``, ``GET /healthz`` (liveness),
  ``GET /readyz`` (readiness, per deployment), ``GET /v1/models`` and the OpenAI routes under
  ``/openai/v1``. It validates, authenticates and limits every request (the Ray-free rules of
  :mod:`lmcot.serving`), then runs the *core* method (:func:`lmcot.inference.adaptive.run_adaptive`
  over :func:`lmcot.inference.method.run_method`) over thin Generator adapters of the two
  deployment handles, so the serving path and ``lmcot eval`` share one implementation of each method.

``Rationalizer`` and ``Answerer`` are the model replicas of :mod:`lmcot.stages.serve_worker`.

One bad client cannot hurt the others:

- *Admission.* Sampling settings the model cannot sample with (a temperature of 1e-40)
  are refused with a 4xx naming the field; each request's worst-case cost (prompts x
  samples x new tokens) is checked against ``serve.max_request_tokens`` before it runs;
  a prompt over the model's input limit is counted with the model's own fitter in the
  replica before any queueing and answered 400 ``context_length_exceeded`` naming the field;
  every deployment bounds its queue (``max_queued_requests``) and answers 503 with
  ``Retry-After`` when it is full.
- *One work queue per model replica* (:mod:`lmcot.serving.work_queue`, in the replicas of
  :mod:`lmcot.stages.serve_worker`): concurrent requests share model calls; long requests run in
  pieces, so short ones wait for about one piece; a piece's wait is bounded (``serve.queue_aging_s``),
  so large allowed requests are answered too; a merged call that fails is retried caller by
  caller, and a request whose client timed out or went away leaves the queue, so only the request
  that caused a failure or timeout gets it.
- *Clean failures.* Every error is JSON in one shape with a request id and no internals
  (:mod:`lmcot.serving.errors`), and the same id is in the log line that explains it, in the
  ingress, the model replicas and Serve's proxy; a lost replica answers 503 with ``Retry-After``
  (the health-check period). Hostile headers, slow bodies and clients that disconnect mid-body
  are handled at the edge (:mod:`lmcot.serving.edges`, :mod:`lmcot.serving.api`).

The OpenAI routes live on the ingress (one application, one copy of the large LM,
one auth and limit policy) and forward to the Answerer's ``complete`` method.
Adaptive self-consistency (:mod:`lmcot.inference.adaptive`) samples in rounds and stops once the
remaining samples cannot change the vote.

Deploy with ``serve deploy serve_configs/lmcot.cpu.yaml`` (args:
:class:`~lmcot.serving.app_args.AppArgs`) or
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
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException

from lmcot.config import Config
from lmcot.inference.adaptive import run_adaptive
from lmcot.inference.method import Question
from lmcot.models.loading import context_tokenizer
from lmcot.prompting.fitting import PromptTooLong
from lmcot.serving import openai_api as oai
from lmcot.serving.answer import AnswerRequest, answer_body, context_text
from lmcot.serving.api import context_length_error, error_response, new_api, read_body
from lmcot.serving.app_args import AppArgs, config_from_args
from lmcot.serving.auth import auth_token, check_bearer
from lmcot.serving.budget import check_budget, sample_tokens
from lmcot.serving.edges import SlowReaders, printable
from lmcot.serving.errors import OPENAI_PREFIX, ApiError
from lmcot.serving.logs import log_to_serve
from lmcot.serving.proxy import PROXY_CALLBACK, RETRY_AFTER_S
from lmcot.serving.readiness import readiness
from lmcot.serving.replica import GenerateCall, unwrap
from lmcot.serving.validation import parse
from lmcot.stages.serve_worker import Answerer, Rationalizer, request_id

log = logging.getLogger(__name__)
STATUS_TIMEOUT_S = 5.0
"""How long ``/readyz`` waits for Serve's controller before answering not ready."""


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
                    return unwrap(response.result(timeout_s=min(remaining, self.POLL_S)))
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


# -- the ingress ---------------------------------------------------------------------------------
api = new_api()

_UNAVAILABLE = (RayActorError, BackPressureError, DeploymentUnavailableError)


def _as_api_error(exc: Exception, timeout_s: float, param: str, retry_after_s: int, bad_input: int) -> ApiError:
    """Map a failure behind the ingress to a status: ``bad_input`` (the route's 4xx) for a prompt too long
    (naming ``param``), 504 timeout, 503 unavailable or full, 500 otherwise.

    Messages never carry the exception's text (it holds pids, addresses, actor ids); the server
    log has it, under the request id in the error body (see :func:`lmcot.serving.api.error_response`).
    A model replica returns a prompt over its limit (:func:`lmcot.serving.replica.unwrap` raises it
    here); its other exceptions arrive wrapped by Ray (``RayTaskError``, also an instance of its
    cause), so a replica's queue timeout maps like a local one.
    """
    if isinstance(exc, ApiError):
        return exc
    cause = getattr(exc, "cause", None) if isinstance(exc, RayTaskError) else None
    if isinstance(cause or exc, PromptTooLong):
        return context_length_error(cause or exc, param, bad_input)
    if isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError):
        return ApiError(504, f"the request took longer than {timeout_s:g}s (serve.request_timeout_s); "
                             "send a smaller one or retry later", code="timeout")
    if isinstance(exc, _UNAVAILABLE) or (isinstance(exc, RayServeException) and "unavailable" in str(exc).lower()):
        log.warning("model replica unavailable: %s", exc)
        if isinstance(exc, BackPressureError):
            return ApiError(503, "a model replica is at capacity; retry after the Retry-After delay",
                            headers={"Retry-After": str(RETRY_AFTER_S)}, code="service_unavailable")
        return ApiError(503, "a model replica is being replaced; retry after the Retry-After delay",
                        headers={"Retry-After": str(retry_after_s)}, code="service_unavailable")
    log.error("request %s failed", request_id() or "-", exc_info=exc)
    return ApiError(500, "internal error; the server log has the details under this request's id",
                    code="internal_error")


def _deployment_states(app: str) -> dict:
    """``{deployment: (status, replica counts per state)}`` of application ``app``, from Serve's controller."""
    deployments = serve.status().applications[app].deployments
    return {name: (d.status, dict(d.replica_states)) for name, d in deployments.items()}


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Ingress:
    """HTTP front: validation, auth and limits, then the core method over the two LM deployments.

    It keeps nothing a replacement replica lacks: the config, the token (read from the
    environment) and the handles are all it holds, so a lost ingress replica is simply
    replaced and clients retry (the proxy answers its in-flight requests 503, see
    :mod:`lmcot.serving.proxy`).
    """

    def __init__(self, cfg: Config, rationalizer, answerer):
        log_to_serve()
        self.cfg = cfg
        self.limits = cfg.serve
        self.token = auth_token(cfg)
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
        """Liveness: ok whenever the ingress answers (see :mod:`lmcot.serving.readiness`)."""
        return {"status": "ok"}

    @api.api_route("/readyz", methods=["GET", "HEAD"])
    async def readyz(self, request: Request):
        """Readiness: every deployment of this application has a running replica; 503 until then."""
        try:
            deployments = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                None, _deployment_states, serve.get_replica_context().app_name), STATUS_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a controller that does not answer is "not ready"
            log.warning("readiness: Serve's status is not available: %s", exc)
            deployments = {}
        ready, report, message = readiness(deployments)
        if ready:
            return JSONResponse(report)
        return error_response(request, 503, message, None, "service_unavailable",
                              {"Retry-After": str(self.retry_after_s)})

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> dict:
        check_bearer(request.headers, self.token)
        return api.openapi()

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request):
        check_bearer(request.headers, self.token)
        return get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title="lmcot")

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        check_bearer(request.headers, self.token)
        return oai.models_body([(self.cfg.small.name_or_path, "rationalizer"), (self.cfg.large.name_or_path, "answerer")])

    @api.post("/v1/answer")
    async def answer(self, request: Request) -> dict:
        check_bearer(request.headers, self.token)
        req = parse(AnswerRequest, await read_body(request, self.limits, self.slow), self.limits)
        k, method, temperature, adaptive = req.resolved(self.limits, self.cfg.generation.temperature)
        check_budget(self.limits, "k", 422, k=k, new_tokens=sample_tokens(method, self.cfg.generation))
        start = time.perf_counter()
        result = await self._in_thread("question", 422, self._answer, req, k, method, temperature, adaptive)
        return answer_body(result, method, k, time.perf_counter() - start)

    @api.get(f"{OPENAI_PREFIX}/models")
    async def openai_models(self, request: Request) -> dict:
        check_bearer(request.headers, self.token)
        return oai.models_body([(self.cfg.large.name_or_path, "answerer")])

    @api.get(OPENAI_PREFIX + "/models/{model_id:path}")
    async def openai_model(self, model_id: str, request: Request) -> dict:
        check_bearer(request.headers, self.token)
        self._check_model(model_id)
        return oai.models_body([(self.cfg.large.name_or_path, "answerer")])["data"][0]

    @api.post(f"{OPENAI_PREFIX}/completions")
    async def completions(self, request: Request) -> dict:
        check_bearer(request.headers, self.token)
        body = await read_body(request, self.limits, self.slow)
        req = parse(oai.CompletionRequest, body, self.limits, status=400)
        call = self._openai_call(req, req.prompt, req.logprobs)
        return oai.completion_response(self.cfg.large.name_or_path, await self._complete(call, "prompt"))

    @api.post(f"{OPENAI_PREFIX}/chat/completions")
    async def chat_completions(self, request: Request) -> dict:
        check_bearer(request.headers, self.token)
        body = await read_body(request, self.limits, self.slow)
        req = parse(oai.ChatCompletionRequest, body, self.limits, status=400)
        top = (req.top_logprobs or 0) if req.logprobs else None
        call = self._openai_call(req, [oai.chat_prompt(req.messages)], top)
        return oai.chat_response(self.cfg.large.name_or_path, await self._complete(call, "messages"))

    # -- helpers ---------------------------------------------------------------------------
    def _check_model(self, model: str) -> None:
        if model != self.cfg.large.name_or_path:
            raise ApiError(404, f"The model `{printable(model)}` does not exist or you do not have access to it; this "
                                f"server has {self.cfg.large.name_or_path!r} (GET {OPENAI_PREFIX}/models)",
                           "model", code="model_not_found")

    def _openai_call(self, req, prompts: list[str], top: int | None) -> dict:
        if req.model:
            self._check_model(req.model)
        if top is not None and self.cfg.large.backend != "hf":
            raise ApiError(400, f"logprobs: not available for large.backend={self.cfg.large.backend}", "logprobs")
        call = oai.completion_call(req, prompts, top)
        field = req.new_tokens()[0]  # the factor is named as the client spelled it
        check_budget(self.limits, field, 400, prompts=len(prompts), n=call["n"], **{field: call["max_tokens"]})
        return call

    async def _complete(self, call: dict, param: str) -> dict:
        response = self.answerer.complete.remote({**call, "timeout_s": self.limits.request_timeout_s})

        async def result():
            return unwrap(await response)

        try:
            return await asyncio.wait_for(result(), self.limits.request_timeout_s)
        except BaseException as exc:  # timeout or client gone: stop the model work too
            if isinstance(exc, (asyncio.TimeoutError, asyncio.CancelledError)):
                response.cancel()
            if isinstance(exc, Exception):
                raise _as_api_error(exc, self.limits.request_timeout_s, param, self.retry_after_s, 400) from None
            raise

    async def _in_thread(self, param: str, bad_input: int, fn, *args):
        """``fn(small, large, *args)`` in the pool, with this request's Serve context (its request id
        then travels with every model call the thread makes) and the request's deadline; ``bad_input``
        is the route's status for a prompt over a model's limit."""
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
                raise _as_api_error(exc, self.limits.request_timeout_s, param, self.retry_after_s,
                                    bad_input) from None
            raise

    def _answer(self, small: HandleGenerator, large: HandleGenerator, req, k: int, method: str, temperature: float,
                adaptive: bool):
        """Run the core method in rounds (one round unless adaptive); stop once the vote is settled."""
        gen = dataclasses.replace(self.cfg.generation, temperature=temperature)
        context = context_text(req.context, self.tokenizer, self.cfg.data.context_max_tokens)
        question = Question("request", req.question, context)
        return run_adaptive(method, [question], small=small, large=large, gen=gen, k=k,
                            round_size=self.limits.adaptive_round_size, adaptive=adaptive)[0]


# -- application builder -------------------------------------------------------------------------
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
    auth_token(cfg)
    return graph(cfg)


def run(cfg: Config, run_dir=None, block: bool | None = None) -> dict:
    """Deploy the graph on the current Ray cluster and return its URLs.

    With ``RAY_ADDRESS`` set the application is deployed to that cluster and outlives
    this call. Without it a local cluster is started here, Serve listens on
    127.0.0.1:8000, and (``block`` defaults to True then) the call serves until Ctrl-C.
    """
    from lmcot.stages.cluster import ensure_ray

    auth_token(cfg)
    remote = bool(os.environ.get("RAY_ADDRESS"))
    if not remote:  # the local cluster's HTTP proxy answers its own errors in lmcot's JSON shape
        os.environ.setdefault(*PROXY_CALLBACK)
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
