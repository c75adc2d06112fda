"""The HTTP edge's rules without Ray: error shape, proxy errors and their logs, bodies, refusals, OpenAI fields, readiness.

The same rules run in the Serve graph (tests/stages/test_serve.py, test_serve_hostile.py); here each
is driven directly (plain ASGI calls, pydantic parsing, a scripted fitter), so a failure names the
rule and not the cluster.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import json
import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from fastapi import Request

from lmcot.config import ServeConfig
from lmcot.prompting.fitting import PromptFitter
from lmcot.serving import api as http
from lmcot.serving import edges
from lmcot.serving.app_args import config_from_args
from lmcot.serving.errors import ApiError, error_body
from lmcot.serving.model_queue import ContextLengthExceeded, QueuedModel
from lmcot.serving.openai_api import ChatCompletionRequest, CompletionRequest, completion_call
from lmcot.serving.proxy import REPLACED_RETRY_AFTER_S, JsonErrorsMiddleware, proxy_middlewares
from lmcot.serving.readiness import readiness
from lmcot.serving.replica import GenerateCall, Refused, generate, refusing, unwrap
from lmcot.serving.validation import parse
from lmcot.serving.work_queue import QueueLimits

ROOT = Path(__file__).resolve().parents[2]
ERROR_KEYS = {"message", "type", "param", "code", "request_id"}


# -- serve configs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lmcot.cpu.yaml", "lmcot.gpu.yaml"])
def test_serve_config_files_parse_into_the_config(name):
    doc = yaml.safe_load((ROOT / "serve_configs" / name).read_text())
    (app,) = doc["applications"]
    assert app["import_path"] == "lmcot.stages.serve:build_app"
    cfg = config_from_args(app["args"])
    assert cfg.serve.max_k >= 1
    if name == "lmcot.gpu.yaml":
        assert cfg.serve.answerer.num_gpus >= 1 and cfg.serve.answerer.autoscaling
        assert cfg.serve.auth_token_env


# -- errors Serve's proxy answers itself ----------------------------------------------------------
def run_proxy_middleware(app) -> tuple[int, dict, dict]:
    """Status, headers and JSON body that ``JsonErrorsMiddleware`` sends for a request to ``app``."""
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "headers": [(b"x-request-id", b"rid-1")]}
    asyncio.run(JsonErrorsMiddleware(app)(scope, receive, send))
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body)


async def plain_503(scope, receive, send):  # what Serve's proxy sends for a full queue
    await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Request dropped due to backpressure"})


def test_the_proxy_answers_its_own_errors_in_the_json_shape():
    async def replica_died(scope, receive, send):  # the proxy sends nothing; uvicorn would say 500
        return None

    async def app_error(scope, receive, send):  # the application's own JSON answers pass through
        body = json.dumps(error_body("k: bad", "k", 422, None, "rid-1")).encode()
        await send({"type": "http.response.start", "status": 422, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    for app, retry in ((plain_503, "1"), (replica_died, str(REPLACED_RETRY_AFTER_S))):
        status, headers, body = run_proxy_middleware(app)
        assert status == 503 and headers["retry-after"] == retry and headers["x-request-id"] == "rid-1"
        assert set(body["error"]) == ERROR_KEYS and body["error"]["request_id"] == "rid-1"
        assert "backpressure" not in body["error"]["message"]
    assert run_proxy_middleware(app_error)[0] == 422
    assert run_proxy_middleware(app_error)[2]["error"]["param"] == "k"


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def serve_logger():
    """Serve's ``ray.serve`` logger as Serve sets it up in its processes; both loggers restored after."""
    serve, ours = logging.getLogger("ray.serve"), logging.getLogger("lmcot")
    saved = [(log, list(log.handlers), log.level, log.propagate) for log in (serve, ours)]
    serve.handlers, serve.propagate = [Records()], False
    serve.setLevel(logging.INFO)
    yield serve
    for log, handlers, level, propagate in saved:
        log.handlers, log.propagate = handlers, propagate
        log.setLevel(level)


def test_the_proxys_own_errors_are_in_serves_log_with_their_request_id(serve_logger):
    proxy_middlewares()  # what Serve's proxy calls at start, after configuring its logger
    run_proxy_middleware(plain_503)
    assert any("rid-1" in line and "503" in line for line in serve_logger.handlers[0].lines)
    serve_logger.handlers = [Records()]  # Serve reconfigures its logging: the lines follow the new handlers
    run_proxy_middleware(plain_503)
    assert any("rid-1" in line for line in serve_logger.handlers[0].lines)


# -- the ingress app: unexpected errors, bodies ------------------------------------------------------
def test_an_unexpected_error_is_a_500_without_internals(caplog):
    from fastapi.testclient import TestClient

    api = http.new_api()

    @api.get("/boom")
    def boom():
        raise RuntimeError("ActorDiedError pid=4242 ip=10.0.0.7 actor_id=abc123")

    with TestClient(api, raise_server_exceptions=False) as client:
        r = client.get("/boom", headers={"x-request-id": "rid-9"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert set(r.json()["error"]) == ERROR_KEYS and r.json()["error"]["request_id"] == "rid-9"
    assert "pid" not in r.text and "10.0.0.7" not in r.text and "rid-9" in r.json()["error"]["message"]
    assert "10.0.0.7" in caplog.text  # the details are in the server log, under the request id


class TaskCancelledError(Exception):
    """What Serve's replica raises from ``receive`` when the proxy's receive task was cancelled (client gone)."""


@pytest.mark.parametrize("gone", [{"type": "http.disconnect"}, TaskCancelledError("Task: 9cbc was cancelled.")],
                         ids=["disconnect message", "receive fails"])
def test_a_client_that_disconnects_mid_body_is_no_500_and_no_traceback(caplog, gone):
    api = http.new_api()

    @api.post("/echo")
    async def echo(request: Request):
        return {"size": len(await http.read_body(request, ServeConfig(), edges.SlowReaders(2)))}

    sent: list[dict] = []
    messages = iter([{"type": "http.request", "body": b'{"quest', "more_body": True}, gone])

    async def receive():
        message = next(messages)
        if isinstance(message, Exception):
            raise message
        return message

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/echo", "raw_path": b"/echo", "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80), "headers": [(b"content-length", b"200"), (b"x-request-id", b"rid-7")]}
    with caplog.at_level(logging.INFO):
        asyncio.run(api(scope, receive, send))  # raises nothing: the server has nothing to log
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    assert start["status"] == http.CLIENT_CLOSED
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert any("rid-7" in r.getMessage() and "disconnected" in r.getMessage() for r in caplog.records)


def test_a_body_that_fails_after_its_reader_was_cancelled_is_not_reported_as_never_retrieved():
    reported: list[dict] = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))

        async def chunks():
            raise ConnectionResetError("the client went away")
            yield b""  # an async generator

        reader = asyncio.ensure_future(edges.read_body(chunks(), max_bytes=100, timeout_s=5,
                                                       slow=edges.SlowReaders(1)))
        await asyncio.sleep(0)  # the reader starts the body task and waits for it
        await asyncio.sleep(0)  # the body task fails; the reader has not resumed yet
        reader.cancel()  # the request is cancelled (the client is gone) before the reader sees the failure
        with pytest.raises(asyncio.CancelledError):
            await reader
        del reader
        gc.collect()

    asyncio.run(main())
    assert not reported, [c.get("message") for c in reported]


# -- the model replicas' refusals ---------------------------------------------------------------------
class Chars:
    """One token per character; an input limit of 8."""

    model_max_length = 8

    def __call__(self, text, **_):
        return {"input_ids": list(text)}


def test_a_prompt_over_the_limit_is_returned_by_the_replica_not_raised(caplog):
    generator = SimpleNamespace(fitter=PromptFitter(model="m", limit=8, tokenizer=Chars()), generate=lambda ps, **_: list(ps))
    model = QueuedModel(generator, QueueLimits(max_rows=4, max_cost=100))
    with caplog.at_level(logging.INFO):
        refused = asyncio.run(refusing(generate(model, GenerateCall(("far too long",), 2), "rid-3"), "rid-3"))
    assert isinstance(refused, Refused) and (refused.error.limit, refused.error.tokens) == (8, 12)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    with pytest.raises(ContextLengthExceeded):  # raised again in the ingress, after crossing Ray
        unwrap(pickle.loads(pickle.dumps(refused)))
    assert unwrap(asyncio.run(refusing(generate(model, GenerateCall(("short",), 2))))) == ["short"]

    async def broken():
        raise RuntimeError("a model failure")

    with pytest.raises(RuntimeError):  # failures of the server stay failures
        asyncio.run(refusing(broken()))


def test_a_prompt_over_the_limit_is_bad_input_of_its_route():
    too_long = ContextLengthExceeded("this model's maximum context length is 8 tokens", 8, 12)
    assert http.context_length_error(too_long, "question", 422).status == 422
    assert http.context_length_error(too_long, "prompt").status == 400


# -- OpenAI fields ------------------------------------------------------------------------------------
MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return parse(ChatCompletionRequest, json.dumps({"messages": MESSAGES, **fields}).encode(),
                 ServeConfig(max_new_tokens=64), status=400)


@pytest.mark.parametrize("fields,param", [
    ({"max_completion_tokens": 100}, "max_completion_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"max_tokens": 4, "max_completion_tokens": 100}, "max_completion_tokens"),
    ({"max_tokens": 100, "max_completion_tokens": 4}, "max_tokens"),
])
def test_max_completion_tokens_is_checked_and_reported_under_its_own_name(fields, param):
    with pytest.raises(ApiError) as refused:
        chat(**fields)
    assert refused.value.status == 400 and refused.value.param == param
    assert refused.value.message.startswith(f"{param}: must be between 1 and 64")


def test_the_completion_length_comes_from_the_field_the_client_sent():
    assert chat(max_completion_tokens=8).new_tokens() == ("max_completion_tokens", 8)
    assert chat(max_tokens=4, max_completion_tokens=8).new_tokens() == ("max_tokens", 4)
    assert completion_call(chat(max_completion_tokens=8), ["hi"], None)["max_tokens"] == 8
    assert completion_call(chat(), ["hi"], None)["max_tokens"] == 16
    plain = parse(CompletionRequest, b'{"prompt": "p", "max_tokens": 5}', ServeConfig(), status=400)
    assert plain.new_tokens() == ("max_tokens", 5)


# -- readiness ----------------------------------------------------------------------------------------
class ReplicaState(str, enum.Enum):  # Serve reports its states as a str enum
    RUNNING = "RUNNING"
    STARTING = "STARTING"


def test_ready_once_every_deployment_has_a_running_replica():
    running = {"Ingress": ("HEALTHY", {ReplicaState.RUNNING: 1}),
               "Rationalizer": ("HEALTHY", {ReplicaState.RUNNING: 2}),
               "Answerer": ("UPSCALING", {ReplicaState.RUNNING: 1, ReplicaState.STARTING: 1})}
    ready, report, message = readiness(running)
    assert ready and message == "ready" and set(report["deployments"]) == set(running)
    assert report["deployments"]["Answerer"] == {"status": "UPSCALING", "replicas": {"RUNNING": 1, "STARTING": 1},
                                                 "ready": True}
    loading = {**running, "Answerer": ("UPDATING", {ReplicaState.STARTING: 1})}
    ready, report, message = readiness(loading)
    assert not ready and report["status"] == "not ready" and "Answerer" in message and "Rationalizer" not in message
    assert not readiness({})[0], "no status from Serve: not ready"
