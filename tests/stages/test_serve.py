"""The Serve graph on a local 2-CPU Ray cluster, over real HTTP on 127.0.0.1.

One application (tiny:t5-small rationalizer, tiny:t5-large answerer) serves the whole
module; a second ingress with a bearer token and a small cost budget, over the same model
deployments, checks auth. Replicas reserve small CPU fractions so both fit on 2 CPUs, and
Serve is shut down at the end of the module. The OpenAI routes are also checked with the
real ``openai`` client: the exception classes it raises are what callers catch.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from lmcot.prompting import prompts
from lmcot.config import ConfigError, ModelSpec
from lmcot.models.generation import HFGenerator
from lmcot.models.openai_backend import OpenAIError, OpenAIGenerator
from lmcot.serving.proxy import PROXY_CALLBACK
from lmcot.scoring.metrics import normalize_answer
from lmcot.inference.method import majority_vote
from lmcot.serving.app_args import AppArgs, config_from_args
from lmcot.stages.serve import Ingress, build_app

pytestmark = pytest.mark.ray

TOKEN_ENV = "LMCOT_TEST_SERVE_TOKEN"
TOKEN = "test-token-123"
# Set before the module's Ray cluster starts: ensure_ray forwards LMCOT_* variables to every worker,
# and the cluster's processes (Serve's HTTP proxy among them) inherit this environment.
os.environ[TOKEN_ENV] = TOKEN
os.environ.setdefault(*PROXY_CALLBACK)

SERVE = {
    "max_k": 8, "max_question_chars": 300, "max_context_chars": 4000, "max_body_bytes": 20000,
    "request_timeout_s": 60.0, "max_top_logprobs": 4096, "max_request_tokens": 2000,
    "ingress": {"num_cpus": 0.05}, "rationalizer": {"num_cpus": 0.1}, "answerer": {"num_cpus": 0.1},
}
# batch_size 2: model work runs in chunks of 2 rows, so a long request has many chunks to cancel.
ARGS = {"config": "tiny", "generation": {"rationale_max_new_tokens": 8, "answer_max_new_tokens": 4, "batch_size": 2},
        "serve": SERVE}
ERROR_KEYS = {"message", "type", "param", "code", "request_id"}
OFFICIAL = [["Alpha", ["Alpha was born in 1901.", "Alpha was a painter."]], ["Beta", ["Beta was born in 1910."]]]
LARGE = "tiny:t5-large"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    """The one error shape: JSON, request id (also the header), no internals."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.text
    error = r.json()["error"]
    assert set(r.json()) == {"error"} and set(error) == ERROR_KEYS, r.text
    assert error["request_id"] and error["request_id"] == r.headers["x-request-id"]
    assert not any(word in error["message"] for word in ("Traceback", "pid=", "ip=", "actor_id", "\x1b[")), error
    if param is not None:
        assert error["param"] == param, error
    if status in (429, 503):
        assert int(r.headers["retry-after"]) >= 1
    return error


@pytest.fixture(scope="module")
def served(ray_cluster):
    """The open (no auth) application at / ; yields an httpx client bound to it."""
    from ray import serve

    port = free_port()
    quiet = {"log_level": "WARNING", "enable_access_log": False}
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=quiet)
    serve.run(build_app(AppArgs(**ARGS)), name="lmcot", route_prefix="/", logging_config=quiet)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client
    serve.shutdown()


# -- builder (no cluster; the Ray-free rules are tested in tests/core/test_serving.py) -------------------
def test_bad_args_fail_before_any_replica_starts(monkeypatch):
    with pytest.raises(ConfigError, match=r"serve\.answerer\.num_gpus"):
        config_from_args({"config": "tiny", "serve": {"answerer": {"num_gpu": 1}}})
    with pytest.raises(ConfigError, match="max_k must be >= 1"):
        config_from_args({"config": "tiny", "set": ["serve.max_k=0"]})
    monkeypatch.delenv("LMCOT_UNSET_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"serve\.auth_token_env='LMCOT_UNSET_TOKEN'.*unset"):
        build_app(AppArgs(config="tiny", serve={"auth_token_env": "LMCOT_UNSET_TOKEN"}))


# -- the graph ----------------------------------------------------------------------------------------
def test_health_and_models(served):
    assert served.get("/healthz").json() == {"status": "ok"}
    ready = served.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
    deployments = ready.json()["deployments"]
    assert set(deployments) == {"Ingress", "Rationalizer", "Answerer"}, deployments
    assert all(d["ready"] and d["replicas"]["RUNNING"] >= 1 for d in deployments.values()), deployments
    assert served.head("/readyz").status_code == 200
    ids = {m["id"]: m["role"] for m in served.get("/v1/models").json()["data"]}
    assert ids == {"tiny:t5-small": "rationalizer", LARGE: "answerer"}
    assert [m["id"] for m in served.get("/openai/v1/models").json()["data"]] == [LARGE]


def test_lm_guided_answer_with_official_context(served):
    r = served.post("/v1/answer", json={"question": "Who was born first?", "context": OFFICIAL, "k": 3,
                                        "method": "lm_guided", "temperature": 0.9})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["rationales"]) == 3 and len(body["answers"]) == 3 and body["samples"] == 3
    # the vote is the one the returned answers give (empty answers do not vote)
    assert (body["answer"], body["votes"]) == majority_vote(body["answers"])
    assert sum(body["votes"].values()) == sum(1 for a in body["answers"] if normalize_answer(a))
    assert body["usage"]["small"]["calls"] == 1  # k rationales in one sampled call
    assert body["usage"]["large"]["calls"] == 3 and body["usage"]["large"]["prompt_tokens"] > 0
    assert body["latency_ms"] > 0


@pytest.mark.parametrize("method", ["standard", "cot"])
def test_standard_and_cot_with_plain_text_context(served, method):
    r = served.post("/v1/answer", json={"question": "Who painted?", "context": "Alpha was a painter.", "method": method})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["samples"] == 1 and body["usage"]["small"]["calls"] == 0 and body["usage"]["large"]["calls"] == 1
    assert (body["rationales"] == []) == (method == "standard")


def test_adaptive_self_consistency_stops_once_the_vote_is_settled(served):
    # Near-greedy sampling gives the same answer every time: after 4 of 6 samples the
    # 2 remaining cannot change the vote, so the third round is never drawn.
    req = {"question": "Who was born first?", "context": OFFICIAL, "k": 6, "temperature": 0.001}
    adaptive = served.post("/v1/answer", json={**req, "adaptive": True}).json()
    assert len(set(adaptive["answers"])) == 1 and adaptive["answer"]
    assert adaptive["samples"] == 4 and adaptive["usage"]["small"]["calls"] == 2
    full = served.post("/v1/answer", json={**req, "adaptive": False}).json()
    assert full["samples"] == 6 and full["usage"]["small"]["calls"] == 1


BAD_INPUTS = [
    ("question wrong type", {"question": 5}, 422, "question"),
    ("question missing", {"context": "x"}, 422, "question"),
    ("question empty", {"question": "   "}, 422, "question"),
    ("question too long", {"question": "q" * 301}, 422, "question"),
    ("k as string", {"question": "q", "k": "3"}, 422, "k"),
    ("k zero", {"question": "q", "k": 0}, 422, "k"),
    ("k above max_k", {"question": "q", "k": 9}, 422, "k"),
    ("temperature as string", {"question": "q", "temperature": "hot"}, 422, "temperature"),
    ("temperature too small to sample", {"question": "q", "k": 2, "temperature": 1e-40}, 422, "temperature"),
    ("greedy with k > 1", {"question": "q", "k": 3, "temperature": 0}, 422, "temperature"),
    ("unknown method", {"question": "q", "method": "magic"}, 422, "method"),
    ("adaptive as string", {"question": "q", "adaptive": "yes"}, 422, "adaptive"),
    ("unknown field", {"question": "q", "contxt": "x"}, 422, "contxt"),
    ("huge context", {"question": "q", "context": "x" * 4001}, 422, "context"),
    ("context a mapping", {"question": "q", "context": {"Alpha": ["s"]}}, 422, "context"),
    ("context sentences not a list", {"question": "q", "context": [["Alpha", "s"]]}, 422, "context"),
    ("context title missing", {"question": "q", "context": [[["s"]]]}, 422, "context"),
    ("context title a number", {"question": "q", "context": [[1, ["s"]]]}, 422, "context"),
    ("too many paragraphs", {"question": "q", "context": [["t", ["s"]]] * 65}, 422, "context"),
    ("body not an object", [1, 2], 422, "body"),
    ("bad JSON", b'{"question": "q", ', 422, "body"),
    ("empty body", b"", 422, "body"),
    ("body too large", {"question": "q", "context": "x" * 30000}, 413, "body"),
]


@pytest.mark.parametrize("case,payload,status,field", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_4xx_naming_the_field(served, case, payload, status, field):
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    r = served.post("/v1/answer", content=content, headers={"Content-Type": "application/json"})
    error = assert_error(r, status, field)
    assert error["message"].startswith(f"{field}:" if status == 422 else "request body")


OPENAI_BAD_INPUTS = [
    ("completions", {"model": LARGE}, 400, "prompt"),
    ("completions", {"model": LARGE, "prompt": "p", "max_tokens": 100000}, 400, "max_tokens"),
    ("completions", {"model": LARGE, "prompt": "p", "n": 2, "temperature": 0}, 400, "temperature"),
    ("completions", {"model": LARGE, "prompt": "p", "temperature": 1e-40}, 400, "temperature"),
    ("completions", {"model": LARGE, "prompt": ["p"] * 32, "n": 8, "max_tokens": 16}, 400, "max_tokens"),
    ("completions", {"model": LARGE, "prompt": "p", "stream": True}, 400, "stream"),
    ("completions", {"model": LARGE, "prompt": "p", "logprobs": 5000}, 400, "logprobs"),
    ("completions", {"model": "gpt-4", "prompt": "p"}, 404, "model"),
    ("chat/completions", {"model": LARGE, "messages": []}, 400, "messages"),
    ("chat/completions", {"model": LARGE, "messages": [{"role": "user", "content": "hi"}],
                          "max_completion_tokens": 100000}, 400, "max_completion_tokens"),
    ("chat/completions", {"model": LARGE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                          "max_completion_tokens": 0}, 400, "max_completion_tokens"),
    ("chat/completions", {"model": LARGE, "messages": [{"role": "user", "content": "hi"}], "n": 8,
                          "max_completion_tokens": 256}, 400, "max_completion_tokens"),  # 2,048 over the budget
    ("chat/completions", {"model": LARGE, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
]


@pytest.mark.parametrize("route,payload,status,field", OPENAI_BAD_INPUTS)
def test_openai_bad_input_is_a_4xx_naming_the_field(served, route, payload, status, field):
    assert_error(served.post(f"/openai/v1/{route}", json=payload), status, field)


def test_unknown_routes_and_methods_use_the_error_shape(served):
    assert assert_error(served.get("/nope"), 404)["code"] == "unknown_url"
    assert_error(served.post("/openai/v1/embeddings", json={}), 404)
    assert_error(served.get("/v1/answer"), 405)
    r = served.get("/healthz", headers={"x-request-id": "client-chosen-id"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-chosen-id"
    assert assert_error(served.get("/nope", headers={"x-request-id": "client-chosen-id"}), 404)["request_id"] == \
        "client-chosen-id"


def openai_client(base_url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/openai/v1", api_key=key, max_retries=0, timeout=60)


def test_openai_client_sees_the_exceptions_openai_raises(served):
    client = openai_client(str(served.base_url))
    assert client.models.retrieve(LARGE).id == LARGE
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="p", max_tokens=2)
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=LARGE, prompt="p", max_tokens=100000)
    assert bad.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as cold:
        client.chat.completions.create(model=LARGE, messages=[{"role": "user", "content": "hi"}], temperature=1e-40)
    assert cold.value.param == "temperature" and cold.value.type == "invalid_request_error"
    ok = client.chat.completions.create(model=LARGE, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                        temperature=0)
    assert ok.choices[0].message.role == "assistant" and ok.usage.total_tokens > 0


def test_openai_wire_format_with_logprobs(served):
    r = served.post("/openai/v1/completions", json={"model": LARGE, "prompt": ["Is it? Answer yes or no.", "b"],
                                                    "max_tokens": 3, "temperature": 0, "logprobs": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and len(body["choices"]) == 2
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) >= 1
    assert all(len(top) <= 3 and all(v <= 0 for v in top.values()) for top in lp["top_logprobs"])
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    chat = served.post("/openai/v1/chat/completions", json={
        "model": LARGE, "messages": [{"role": "user", "content": "Is it? Answer yes or no."}], "max_completion_tokens": 2,
        "temperature": 0, "logprobs": True, "top_logprobs": 2}).json()
    content = chat["choices"][0]["logprobs"]["content"]
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"
    assert content and len(content[0]["top_logprobs"]) <= 2 and "logprob" in content[0]


def test_logprobs_list_no_special_tokens(served):
    """Neither a chosen token nor an alternative is a special token (<pad>, </s>, <unk>), as with OpenAI."""
    special = set(HFGenerator(ModelSpec(LARGE)).tokenizer.all_special_tokens)
    chat = served.post("/openai/v1/chat/completions", json={
        "model": LARGE, "messages": [{"role": "user", "content": "Is it? Answer yes or no."}], "max_tokens": 4,
        "temperature": 0, "logprobs": True, "top_logprobs": 20}).json()
    content = chat["choices"][0]["logprobs"]["content"]
    names = {c["token"] for c in content} | {a["token"] for c in content for a in c["top_logprobs"]}
    assert content and len(content[0]["top_logprobs"]) == 20 and not names & special, names & special
    text = served.post("/openai/v1/completions", json={"model": LARGE, "prompt": "Is it?", "max_tokens": 4,
                                                       "temperature": 0, "logprobs": 20}).json()
    lp = text["choices"][0]["logprobs"]
    assert not (set(lp["tokens"]) | {t for top in lp["top_logprobs"] for t in top}) & special


def test_openai_generator_against_the_answerer(served):
    """The core ``openai`` backend talking to lmcot's own Answerer matches the same model run locally."""
    spec = ModelSpec(LARGE, backend="openai", base_url=f"{served.base_url}/openai/v1")
    local = HFGenerator(ModelSpec(LARGE))
    judge = [prompts.judge_prompt(a, "Who was born first?", "Alpha: 1901. Beta: 1910.", "Alpha was born first.")
             for a in ("factuality", "relevance", "fluency")]
    with OpenAIGenerator(spec, top_logprobs=4096) as remote:
        greedy = remote.generate(judge, max_new_tokens=4)
        assert [g.texts for g in greedy] == [g.texts for g in local.generate(judge, max_new_tokens=4)]
        assert all(g.prompt_tokens > 0 and g.completion_tokens > 0 for g in greedy)
        sampled = remote.generate(judge[:1], max_new_tokens=4, n=3, temperature=1.0)
        assert len(sampled[0].texts) == 3
        assert remote.score_yes_no(judge) == pytest.approx(local.score_yes_no(judge), abs=1e-4)


def test_auth_on_every_route_but_health(ray_cluster, served):
    """A second ingress with a bearer token and a budget of 60 new tokens, over the first application's models."""
    from ray import serve

    cfg = config_from_args({**ARGS, "serve": {**SERVE, "auth_token_env": TOKEN_ENV, "max_request_tokens": 60}})
    models = [serve.get_deployment_handle(name, app_name="lmcot") for name in ("Rationalizer", "Answerer")]
    serve.run(Ingress.options(**cfg.serve.ingress.deployment_options()).bind(cfg, *models),
              name="secure", route_prefix="/secure")
    try:
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert served.get("/secure/healthz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = served.post("/secure/v1/answer", json={"question": "q"}, headers=headers)
            assert assert_error(r, 401, "authorization")["code"] == "invalid_api_key"
            for path in ("/secure/v1/models", f"/secure/openai/v1/models/{LARGE}", "/secure/docs", "/secure/openapi.json",
                         "/secure/redoc"):
                assert served.get(path, headers=headers).status_code in ((401, 404) if "redoc" in path else (401,)), path
            assert served.post("/secure/openai/v1/completions", json={"prompt": "p"}, headers=headers).status_code == 401
        # auth runs before validation: a bad body without a token is still 401
        assert served.post("/secure/v1/answer", content=b"{", headers={}).status_code == 401
        assert served.post("/secure/v1/answer", json={"question": "q"}, headers=ok).status_code == 200
        assert "/v1/answer" in served.get("/secure/openapi.json", headers=ok).json()["paths"]
        assert "swagger" in served.get("/secure/docs", headers=ok).text.lower()
        # the cost budget: k=5 x (8 + 4) new tokens = 60 fits, k=6 does not
        over = served.post("/secure/v1/answer", json={"question": "q", "k": 6, "temperature": 0.9}, headers=ok)
        assert "serve.max_request_tokens" in assert_error(over, 422, "k")["message"]
        with pytest.raises(openai.AuthenticationError):
            openai_client(f"{served.base_url}/secure", "wrong").models.list()
        assert openai_client(f"{served.base_url}/secure", TOKEN).models.list().data[0].id == LARGE
        spec = ModelSpec(LARGE, backend="openai", base_url=f"{served.base_url}/secure/openai/v1", api_key_env=TOKEN_ENV)
        with OpenAIGenerator(spec) as gen:
            assert gen.generate(["p"], max_new_tokens=2)[0].completion_tokens > 0
        with OpenAIGenerator(ModelSpec(LARGE, backend="openai", base_url=spec.base_url, api_key_env="LMCOT_NO_SUCH")) as gen:
            with pytest.raises(OpenAIError, match="401"):
                gen.generate(["p"], max_new_tokens=2)
    finally:
        serve.delete("secure")


def test_a_full_queue_answers_503_with_retry_after(ray_cluster, served):
    """An ingress that works on 1 request and queues 1 more: the rest are refused at once, in the JSON shape."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    cfg = config_from_args({**ARGS, "serve": {**SERVE, "ingress": {"num_cpus": 0.05, "max_ongoing_requests": 1,
                                                                    "max_queued_requests": 1}}})
    models = [serve.get_deployment_handle(name, app_name="lmcot") for name in ("Rationalizer", "Answerer")]
    serve.run(Ingress.options(**cfg.serve.ingress.deployment_options()).bind(cfg, *models),
              name="tight", route_prefix="/tight")
    try:
        body = {"question": "Who was born first?", "context": OFFICIAL, "k": 4, "temperature": 0.9}
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: served.post("/tight/v1/answer", json=body), range(6)))
        statuses = sorted(r.status_code for r in answers)
        assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}, statuses
        for r in answers:
            if r.status_code == 503:
                assert_error(r, 503)
        # the proxy answered these itself: their request ids are in its Serve log, not only on its stderr
        logs = Path(ray_cluster._private.worker._global_node.get_logs_dir_path()) / "serve"
        rids = {r.headers["x-request-id"] for r in answers if r.status_code == 503}
        deadline = time.monotonic() + 20
        while (missing := {rid for rid in rids if not any(rid in f.read_text(errors="replace")
                                                          for f in logs.glob("proxy_*.log"))}):
            assert time.monotonic() < deadline, f"503 request ids in no proxy log: {missing}"
            time.sleep(0.5)
    finally:
        serve.delete("tight")


# -- cancellation and chaos ----------------------------------------------------------------------------
def test_a_client_that_gives_up_stops_its_model_work(served, ray_cluster):
    """A long logprobs request whose client times out: the Answerer drops its remaining chunks."""
    from ray import serve

    answerer = serve.get_deployment_handle("Answerer", app_name="lmcot")
    before = answerer.stats.remote().result(timeout_s=30)
    body = {"model": LARGE, "prompt": [f"question {i}?" for i in range(16)], "n": 4, "max_tokens": 30,
            "temperature": 1.0, "logprobs": 5}  # 16 model calls of one prompt x 4 rows (batch_size 2)
    with pytest.raises(httpx.TimeoutException):
        served.post("/openai/v1/completions", json=body, timeout=1.0)
    deadline = time.monotonic() + 30
    while (after := answerer.stats.remote().result(timeout_s=30))["dropped_items"] == before["dropped_items"]:
        assert time.monotonic() < deadline, f"the model never dropped the abandoned request's prompts: {after}"
        time.sleep(0.25)
    assert after["batches"] - before["batches"] < 16
    assert served.post("/v1/answer", json={"question": "still there?"}).status_code == 200


def _replicas(deployment: str) -> set[str]:
    import ray

    prefix = f"SERVE_REPLICA::lmcot#{deployment}#"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


NORMAL = [
    ("/v1/answer", {"question": "Who?", "context": "Alpha. Beta.", "k": 2}),
    ("/openai/v1/completions", {"model": LARGE, "prompt": ["Is it?", "Or not?"], "max_tokens": 3, "temperature": 0}),
    ("/openai/v1/chat/completions", {"model": LARGE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                                     "temperature": 0.7, "n": 2}),
]
PATHOLOGICAL = [
    ("/openai/v1/chat/completions", {"model": LARGE, "messages": [{"role": "user", "content": "hi"}],
                                     "temperature": 1e-40}),
    ("/openai/v1/completions", {"model": LARGE, "prompt": ["p"] * 32, "n": 8, "max_tokens": 256, "logprobs": 20}),
    ("/v1/answer", {"question": "q", "k": 8, "temperature": 1e-30}),
    ("/v1/answer", b'{"question": '),
    ("/openai/v1/completions", {"model": LARGE, "prompt": "p" * 30000}),
]
ABANDONED = ("/openai/v1/completions", {"model": LARGE, "prompt": [f"q{i}" for i in range(16)], "n": 4,
                                        "max_tokens": 30, "temperature": 1.0, "logprobs": 5})


def test_chaos_a_pathological_client_and_a_lost_ingress_replica(served):
    """Bounded mixed load: 3 normal clients, 1 pathological client, and the Ingress replica killed mid-run.

    The normal clients lose only requests in flight on the killed replica (or sent to it before
    the proxy saw it go), and those are 503 with Retry-After in the one JSON error shape; every
    other normal request succeeds. The pathological client only ever gets 4xx (or gives up
    itself), apart from its own request in flight at the kill.
    """
    import ray
    from ray import serve

    normal: list[tuple[float, float, int, httpx.Response | None]] = []
    hostile: list[tuple[float, float, int | str]] = []
    stop = threading.Event()

    def send(c: httpx.Client, route: str, payload, timeout: float = 30) -> httpx.Response:
        if isinstance(payload, bytes):
            return c.post(route, content=payload, headers={"Content-Type": "application/json"}, timeout=timeout)
        return c.post(route, json=payload, timeout=timeout)

    def normal_client(offset: int):
        with httpx.Client(base_url=served.base_url) as c:
            i = offset
            while not stop.is_set():
                route, payload = NORMAL[i % len(NORMAL)]
                i += 1
                t0 = time.monotonic()
                try:
                    r = send(c, route, payload)
                    normal.append((t0, time.monotonic(), r.status_code, r))
                except httpx.HTTPError as exc:
                    normal.append((t0, time.monotonic(), type(exc).__name__, None))

    def pathological_client():
        with httpx.Client(base_url=served.base_url) as c:
            i = 0
            while not stop.is_set():
                route, payload = (PATHOLOGICAL + [ABANDONED])[i % (len(PATHOLOGICAL) + 1)]
                i += 1
                t0 = time.monotonic()
                try:
                    status = send(c, route, payload, timeout=0.5 if payload is ABANDONED[1] else 30).status_code
                except httpx.TimeoutException:
                    status = "gave up"
                hostile.append((t0, time.monotonic(), status))

    threads = [threading.Thread(target=normal_client, args=(i,), daemon=True) for i in range(3)]
    threads.append(threading.Thread(target=pathological_client, daemon=True))
    for t in threads:
        t.start()
    time.sleep(3.0)
    (old,) = _replicas("Ingress")
    ray.kill(ray.get_actor(old, namespace="serve"), no_restart=True)
    killed_at = time.monotonic()
    while True:  # recovered: a new Ingress replica that Serve counts RUNNING
        names = _replicas("Ingress")
        states = serve.status().applications["lmcot"].deployments["Ingress"].replica_states
        if names and old not in names and dict(states) == {"RUNNING": 1}:
            break
        if time.monotonic() > killed_at + 60:
            stop.set()
            pytest.fail(f"no replacement Ingress replica within 60 s (replicas {names}, states {states})")
        time.sleep(0.25)
    recovered_at = time.monotonic()
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join(timeout=40)
    assert not any(t.is_alive() for t in threads), "a client hung past its timeout"

    failed = [(t0, t1, status, r) for t0, t1, status, r in normal if status != 200]
    for t0, t1, status, r in failed:
        assert isinstance(r, httpx.Response), f"{status}: no HTTP answer at all"
        assert_error(r, 503)
        assert t0 <= recovered_at and t1 >= killed_at, (t0 - killed_at, t1 - killed_at)  # around the kill only
    in_flight = [s for t0, t1, s, _ in normal if t0 < killed_at < t1]
    assert in_flight and set(in_flight) <= {200, 503}
    before = [s for _, t1, s, _ in normal if t1 < killed_at]
    assert before and set(before) == {200}, before
    after = {s for t0, _, s, _ in normal if t0 > recovered_at + 0.5}
    assert after == {200}, after
    refused = [s for t0, t1, s in hostile if not t0 <= killed_at <= t1]  # the kill may 503 its in-flight one
    assert refused and all(s == "gave up" or 400 <= s < 500 for s in refused), refused
