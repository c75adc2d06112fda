"""The Serve graph on a local 2-CPU Ray cluster, over real HTTP on 127.0.0.1.

One application (tiny:t5-small rationalizer, tiny:t5-large answerer) serves the whole
module; a second ingress with a bearer token, over the same model deployments, checks auth. Replicas reserve small CPU
fractions so both fit on 2 CPUs, and Serve is shut down at the end of the module.
"""

from __future__ import annotations

import doctest
import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from lmcot import prompts
from lmcot.config import ConfigError, ModelSpec
from lmcot.generation import HFGenerator
from lmcot.openai_backend import OpenAIError, OpenAIGenerator
from lmcot.stages import serve as serve_module
from lmcot.stages import serve_http
from lmcot.stages.serve import AppArgs, Ingress, build_app, config_from_args

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
TOKEN_ENV = "LMCOT_TEST_SERVE_TOKEN"
TOKEN = "test-token-123"
# Set before the module's Ray cluster starts: ensure_ray forwards LMCOT_* variables to every worker.
os.environ[TOKEN_ENV] = TOKEN

SERVE = {
    "max_k": 6, "max_question_chars": 300, "max_context_chars": 4000, "max_body_bytes": 20000,
    "request_timeout_s": 60.0, "max_top_logprobs": 4096,
    "ingress": {"num_cpus": 0.05}, "rationalizer": {"num_cpus": 0.1}, "answerer": {"num_cpus": 0.1},
}
ARGS = {"config": "tiny", "generation": {"rationale_max_new_tokens": 8, "answer_max_new_tokens": 4}, "serve": SERVE}
OFFICIAL = [["Alpha", ["Alpha was born in 1901.", "Alpha was a painter."]], ["Beta", ["Beta was born in 1910."]]]
LARGE = "tiny:t5-large"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


# -- builder, config files and pure helpers (no cluster) ---------------------------------------------
@pytest.mark.parametrize("module", [serve_module, serve_http])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


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
    ids = {m["id"]: m["role"] for m in served.get("/v1/models").json()["data"]}
    assert ids == {"tiny:t5-small": "rationalizer", LARGE: "answerer"}
    assert [m["id"] for m in served.get("/openai/v1/models").json()["data"]] == [LARGE]


def test_lm_guided_answer_with_official_context(served):
    r = served.post("/v1/answer", json={"question": "Who was born first?", "context": OFFICIAL, "k": 3,
                                        "method": "lm_guided", "temperature": 0.9})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["rationales"]) == 3 and len(body["answers"]) == 3 and body["samples"] == 3
    assert sum(body["votes"].values()) <= 3 and isinstance(body["answer"], str)
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
    ("k above max_k", {"question": "q", "k": 7}, 422, "k"),
    ("temperature as string", {"question": "q", "temperature": "hot"}, 422, "temperature"),
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
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == field and error["message"].startswith(f"{field}:" if status == 422 else "request body")


OPENAI_BAD_INPUTS = [
    ("completions", {"model": LARGE}, 422, "prompt"),
    ("completions", {"model": LARGE, "prompt": "p", "max_tokens": 100000}, 422, "max_tokens"),
    ("completions", {"model": LARGE, "prompt": "p", "n": 2, "temperature": 0}, 422, "temperature"),
    ("completions", {"model": LARGE, "prompt": "p", "stream": True}, 422, "stream"),
    ("completions", {"model": LARGE, "prompt": "p", "logprobs": 5000}, 422, "logprobs"),
    ("completions", {"model": "gpt-4", "prompt": "p"}, 404, "model"),
    ("chat/completions", {"model": LARGE, "messages": []}, 422, "messages"),
    ("chat/completions", {"model": LARGE, "messages": [{"role": "robot", "content": "hi"}]}, 422, "messages.0.role"),
]


@pytest.mark.parametrize("route,payload,status,field", OPENAI_BAD_INPUTS)
def test_openai_bad_input_is_a_4xx_naming_the_field(served, route, payload, status, field):
    r = served.post(f"/openai/v1/{route}", json=payload)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == field


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
    """A second ingress with a bearer token, over the first application's model deployments."""
    from ray import serve

    cfg = config_from_args({**ARGS, "serve": {**SERVE, "auth_token_env": TOKEN_ENV}})
    models = [serve.get_deployment_handle(name, app_name="lmcot") for name in ("Rationalizer", "Answerer")]
    serve.run(Ingress.options(**cfg.serve.ingress.deployment_options()).bind(cfg, *models),
              name="secure", route_prefix="/secure")
    try:
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert served.get("/secure/healthz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = served.post("/secure/v1/answer", json={"question": "q"}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["param"] == "authorization"
            assert served.get("/secure/v1/models", headers=headers).status_code == 401
            assert served.post("/secure/openai/v1/completions", json={"prompt": "p"}, headers=headers).status_code == 401
        # auth runs before validation: a bad body without a token is still 401
        assert served.post("/secure/v1/answer", content=b"{", headers={}).status_code == 401
        assert served.post("/secure/v1/answer", json={"question": "q"}, headers=ok).status_code == 200
        spec = ModelSpec(LARGE, backend="openai", base_url=f"{served.base_url}/secure/openai/v1", api_key_env=TOKEN_ENV)
        with OpenAIGenerator(spec) as gen:
            assert gen.generate(["p"], max_new_tokens=2)[0].completion_tokens > 0
        with OpenAIGenerator(ModelSpec(LARGE, backend="openai", base_url=spec.base_url, api_key_env="LMCOT_NO_SUCH")) as gen:
            with pytest.raises(OpenAIError, match="401"):
                gen.generate(["p"], max_new_tokens=2)
    finally:
        serve.delete("secure")


def _replicas(deployment: str) -> set[str]:
    import ray

    prefix = f"SERVE_REPLICA::lmcot#{deployment}#"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


@pytest.mark.slow
def test_killed_replica_recovers_under_load(served):
    """Kill the Answerer replica while 3 clients send requests; once Serve has replaced it, all succeed."""
    import ray
    from ray import serve

    results: list[tuple[float, float, int | str]] = []
    stop = threading.Event()

    def client():
        with httpx.Client(base_url=served.base_url, timeout=30) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    status = c.post("/v1/answer", json={"question": "Who?", "context": "Alpha. Beta.", "k": 2}).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                results.append((t0, time.monotonic(), status))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    (old,) = _replicas("Answerer")
    ray.kill(ray.get_actor(old, namespace="serve"), no_restart=True)
    killed_at = time.monotonic()
    while True:  # recovered: a new replica, and Serve counts it RUNNING
        names = _replicas("Answerer")
        states = serve.status().applications["lmcot"].deployments["Answerer"].replica_states
        if names and old not in names and dict(states) == {"RUNNING": 1}:
            break
        if time.monotonic() > killed_at + 90:
            stop.set()
            pytest.fail(f"no replacement Answerer replica within 90 s (replicas {names}, states {states})")
        time.sleep(0.25)
    recovered_at = time.monotonic()
    time.sleep(4.0)
    stop.set()
    for t in threads:
        t.join(timeout=40)
    assert not any(t.is_alive() for t in threads), "a client hung past its timeout"
    before = [s for _, end, s in results if end < killed_at]
    during = [s for start, end, s in results if end >= killed_at and start <= recovered_at + 1.0]
    after = [s for start, _, s in results if start > recovered_at + 1.0]
    assert before and set(before) == {200}
    assert all(s == 200 or (isinstance(s, int) and s >= 500) for s in during), during  # failures are 5xx, not 4xx
    assert after and set(after) == {200}, after
