"""The serve graph against a hostile client: over-long prompts, hostile headers and bodies, load, replayed.

One application on the tiny models (its own Ray session, loopback only), small limits so each
case is quick, and a bounded number of requests. A case fails on any 5xx, any error that is not
the one JSON shape, or a normal client's request failing because of another client. Raw sockets
send what ``httpx`` would refuse to (non-UTF-8 header bytes, a trickled body).
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

from lmcot.serving.app_args import AppArgs
from lmcot.serving.proxy import PROXY_CALLBACK
from lmcot.stages.serve import build_app

pytestmark = pytest.mark.ray
os.environ.setdefault(*PROXY_CALLBACK)

LARGE = "tiny:t5-large"  # input limit 512 tokens
TIMEOUT_S = 30.0
SERVE = {
    "max_k": 4, "request_timeout_s": TIMEOUT_S, "max_request_tokens": 1024, "max_new_tokens": 128,
    "max_chunk_tokens": 256, "queue_aging_s": 0.5, "body_read_timeout_s": 2.0, "max_slow_body_readers": 2,
    "ingress": {"num_cpus": 0.05}, "rationalizer": {"num_cpus": 0.1}, "answerer": {"num_cpus": 0.1},
}
ARGS = {"config": "tiny", "generation": {"rationale_max_new_tokens": 8, "answer_max_new_tokens": 4, "batch_size": 4},
        "serve": SERVE}
ERROR_KEYS = {"message", "type", "param", "code", "request_id"}


@pytest.fixture(scope="module")
def app(ray_cluster):
    """(httpx client, port, serve log directory) of the application at / on a free loopback port."""
    import ray
    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging_config = {"log_level": "INFO", "enable_access_log": False}
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=logging_config)
    serve.run(build_app(AppArgs(**ARGS)), name="lmcot", route_prefix="/", logging_config=logging_config)
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT_S + 10) as client:
        yield client, port, logs
    serve.shutdown()


def check_error(status: int, headers: dict, body: bytes, expected: int | None = None) -> dict:
    """The one JSON error shape, with the same request id in body and header, nothing unprintable echoed."""
    assert status < 500 or status == 503, (status, body[:300])
    if expected is not None:
        assert status == expected, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:300])
    doc = json.loads(body)
    error = doc["error"]
    assert set(doc) == {"error"} and set(error) == ERROR_KEYS, doc
    assert error["request_id"] == headers["x-request-id"], (error["request_id"], headers["x-request-id"])
    assert error["message"].isprintable(), error["message"]
    return error


def raw(port: int, head: bytes, body: bytes = b"", timeout: float = 40.0) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 exchange over a socket: status, headers (lower-case names) and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + b"\r\n" + body)
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head_out, _, payload = data.partition(b"\r\n\r\n")
    lines = head_out.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    return int(lines[0].split()[1]), headers, payload


def request(method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close",
             f"Content-Length: {len(body)}".encode()]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n", body


def log_lines(logs: Path, pattern: str, text: str) -> list[str]:
    """The lines holding ``text`` in the Serve logs matching ``pattern``."""
    return [line for f in logs.glob(pattern) for line in f.read_text(errors="replace").splitlines() if text in line]


# -- 1. over-long prompts: context_length_exceeded (bad input of the route), naming the field ------------
LONG_WORDS = " ".join(["ab"] * 650)  # 1,949 characters (under serve.max_question_chars), over 512 tokens
OVER_LONG = [
    ("/v1/answer", {"question": LONG_WORDS, "method": "standard"}, "question", 422),
    ("/v1/answer", {"question": LONG_WORDS, "method": "lm_guided"}, "question", 422),
    ("/openai/v1/completions", {"model": LARGE, "prompt": " ".join(["word"] * 1200), "max_tokens": 2}, "prompt", 400),
    ("/openai/v1/completions", {"model": LARGE, "prompt": ["short", LONG_WORDS], "max_tokens": 2,
                                "logprobs": 2}, "prompt", 400),
    ("/openai/v1/chat/completions", {"model": LARGE, "max_tokens": 2,
                                     "messages": [{"role": "user", "content": "hi there"}] * 1000}, "messages", 400),
]


@pytest.mark.parametrize("route,payload,param,status", OVER_LONG, ids=[f"{r}-{p}" for r, _, p, _ in OVER_LONG])
def test_an_over_long_prompt_is_bad_input_naming_the_limit_and_the_field(app, route, payload, param, status):
    client, _, logs = app
    r = client.post(route, json=payload)
    error = check_error(r.status_code, r.headers, r.content, status)
    assert error["code"] == "context_length_exceeded" and error["param"] == param, error
    assert "maximum context length is 512 tokens" in error["message"] and error["message"].startswith(param)
    # the client's mistake: no failed request, no traceback in the model replicas' logs
    assert not [line for line in log_lines(logs, "replica_*.log", error["request_id"])
                if "ERROR" in line or "Traceback" in line or "Request failed" in line]


def test_the_openai_client_gets_a_bad_request_it_does_not_retry(app):
    client, _, _ = app
    oai = openai.OpenAI(base_url=f"{client.base_url}/openai/v1", api_key="unused", timeout=TIMEOUT_S)
    with pytest.raises(openai.BadRequestError) as bad:
        oai.completions.create(model=LARGE, prompt=" ".join(["word"] * 1200), max_tokens=2)
    assert bad.value.code == "context_length_exceeded" and bad.value.param == "prompt"


# -- 3. hostile headers: a JSON 4xx or ignored, never a 5xx -------------------------------------------
HOSTILE_HEADERS = [
    [(b"X-Request-ID", b"\xff\xfe\x80bad")],
    [(b"X-Request-ID", b"a" * 300)],
    [(b"X-Request-ID", b"")],
    [(b"X-Request-ID", b"one"), (b"X-Request-ID", b"two")],
    [(b"Authorization", b"Bearer \xe9\xff")],
    [(b"Accept", b"\xc3\x28"), (b"Content-Type", b"application/json; charset=\xff")],
    [(b"serve_multiplexed_model_id", b"\xff\xfe"), (b"X-Custom", b"\x80" * 64)],
]


@pytest.mark.parametrize("headers", HOSTILE_HEADERS, ids=range(len(HOSTILE_HEADERS)))
@pytest.mark.parametrize("method,path,body", [("GET", "/healthz", b""), ("GET", "/v1/models", b""),
                                              ("POST", "/v1/answer", b'{"question": 5}'), ("GET", "/nope", b"")])
def test_hostile_header_bytes_never_cost_a_5xx(app, headers, method, path, body):
    _, port, _ = app
    head, payload = request(method, path, headers, body)
    status, out_headers, out = raw(port, head, payload)
    assert status < 500, (status, out[:300])
    rid = out_headers["x-request-id"]
    assert rid.isprintable() and 0 < len(rid) <= 128
    if status >= 400:
        check_error(status, out_headers, out)
    if headers == [(b"X-Request-ID", b"one"), (b"X-Request-ID", b"two")]:
        assert rid == "one"


# -- 4. slow bodies: a deadline and a cap on slow readers -----------------------------------------------
def test_slow_bodies_cannot_lock_out_a_normal_client(app):
    client, port, _ = app
    results: list[tuple[int, dict, bytes]] = []

    def trickle():
        head, _ = request("POST", "/v1/answer", [(b"Content-Type", b"application/json")], b"x" * 200)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head + b"\r\n")
            try:
                for _ in range(40):  # a byte every 0.2 s: 8 s for what should take none
                    sock.sendall(b" ")
                    time.sleep(0.2)
            except OSError:
                pass  # the server answered and closed
            results.append(read_response(sock))

    slow = [threading.Thread(target=trickle, daemon=True) for _ in range(8)]
    for t in slow:
        t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    r = client.post("/v1/answer", json={"question": "Who?", "method": "standard"})
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 < 10, "a normal client waited behind slow bodies"
    for t in slow:
        t.join(timeout=30)
    assert len(results) == 8
    for status, headers, payload in results:
        assert check_error(status, headers, payload, 408)["param"] == "body"


# -- 5. traceability: the error body's request id is in the log line that explains it -----------------
def test_an_errors_request_id_is_in_the_log_line_that_explains_it(app):
    client, _, logs = app
    r = client.post("/openai/v1/completions", json={"model": LARGE, "prompt": LONG_WORDS, "max_tokens": 2})
    rid = check_error(r.status_code, r.headers, r.content, 400)["request_id"]
    deadline = time.monotonic() + 20
    while True:
        lines = [line for f in logs.glob("replica_*Ingress*.log") for line in f.read_text(errors="replace").splitlines()
                 if rid in line]
        if any("context length" in line for line in lines) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert any("400" in line and "context length" in line for line in lines), lines


# -- 6. OpenAI parity -------------------------------------------------------------------------------
def test_chat_content_as_a_list_of_text_parts(app):
    client, _, _ = app
    parts = [{"type": "text", "text": "Is it?"}, {"type": "text", "text": "Answer yes or no."}]
    ok = client.post("/openai/v1/chat/completions", json={"model": LARGE, "max_tokens": 2, "temperature": 0,
                                                          "messages": [{"role": "user", "content": parts}]})
    assert ok.status_code == 200, ok.text
    image = [{"type": "image_url", "image_url": {"url": "http://x"}}]
    bad = client.post("/openai/v1/chat/completions", json={"model": LARGE, "messages": [{"role": "user",
                                                                                          "content": image}]})
    assert check_error(bad.status_code, bad.headers, bad.content, 400)["param"] == "messages.0.content.0.type"


def test_a_mistyped_union_field_names_the_field(app):
    client, _, _ = app
    r = client.post("/openai/v1/completions", json={"model": LARGE, "prompt": 5})
    assert check_error(r.status_code, r.headers, r.content, 400)["param"] == "prompt"


def test_logprob_tokens_are_cut_at_the_stop(app):
    client, _, _ = app
    body = {"model": LARGE, "prompt": "Question: who was born first?", "max_tokens": 12, "temperature": 0,
            "logprobs": 2}
    full = client.post("/openai/v1/completions", json=body).json()["choices"][0]
    tokens = [t for t in full["logprobs"]["tokens"] if t.strip()]
    assert len(tokens) >= 3, full
    stop = tokens[2].strip()
    cut = client.post("/openai/v1/completions", json={**body, "stop": [stop]}).json()["choices"][0]
    assert cut["text"] == full["text"][:full["text"].find(stop)] and cut["finish_reason"] == "stop"
    lp = cut["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) < len(full["logprobs"]["tokens"])
    assert stop not in "".join(lp["tokens"][-1:]) or not lp["tokens"]


def test_a_client_that_disconnects_mid_body_costs_no_500_and_no_traceback(app):
    client, port, logs = app
    rid = "gone-mid-body-1"
    head, _ = request("POST", "/v1/answer", [(b"Content-Type", b"application/json"), (b"X-Request-ID", rid.encode())],
                      b"x" * 200)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"\r\n" + b'{"question": "Who')
        time.sleep(1.0)  # past edges.SLOW_AFTER_S: the ingress is reading the body
    time.sleep(3.0)
    assert client.post("/v1/answer", json={"question": "Who?", "method": "standard"}).status_code == 200
    lines = log_lines(logs, "replica_*Ingress*.log", rid)
    assert not [line for line in lines if " 500 " in line or "ERROR" in line], lines
    assert not log_lines(logs, "replica_*Ingress*.log", "Traceback")
    workers = logs.parent.glob("worker-*.err")
    assert not [f.name for f in workers if "Task exception was never retrieved" in f.read_text(errors="replace")]


def test_header_bytes_uvicorn_refuses_get_its_plain_text_400(app):
    """Documented in README's error contract: uvicorn answers these before any lmcot code runs."""
    _, port, _ = app
    for bad in (b"X-Bad: a\x00b", b"X-Bad: a\rb"):
        status, headers, _ = raw(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                                       + bad + b"\r\n")
        assert status == 400 and headers.get("content-type", "").startswith("text/plain"), (bad, status, headers)


def test_readiness_reports_each_deployment_without_a_token(app):
    client, _, _ = app
    r = client.get("/readyz")
    assert r.status_code == 200 and set(r.json()["deployments"]) == {"Ingress", "Rationalizer", "Answerer"}, r.text


# -- 7. minor edges ------------------------------------------------------------------------------------
def test_head_health_control_characters_and_request_ids(app):
    client, _, _ = app
    head = client.head("/healthz")
    assert head.status_code == 200 and head.content == b""
    r = client.post("/openai/v1/completions", json={"model": "gpt\x1b[31m\n\x00", "prompt": "p"})
    error = check_error(r.status_code, r.headers, r.content, 404)
    assert "\x1b" not in error["message"] and "\n" not in error["message"] and "\x00" not in error["message"]
    long_id = "r" * 128
    r = client.get("/nope", headers={"x-request-id": long_id})
    assert check_error(r.status_code, r.headers, r.content, 404)["request_id"] == long_id


# -- 2. large allowed requests beside normal ones: everyone answered in time, no one pays for another --
MAXIMAL = ("/openai/v1/completions", {"model": LARGE, "prompt": [f"Question {i}: who came first?" for i in range(4)],
                                      "n": 2, "max_tokens": 128, "temperature": 1.0, "logprobs": 5})  # 1,024 tokens
NORMAL = [
    ("/v1/answer", {"question": "Who?", "context": "Alpha. Beta.", "k": 2, "temperature": 0.7}),
    ("/openai/v1/chat/completions", {"model": LARGE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                                     "temperature": 0}),
]
BROKEN = [
    ("/openai/v1/completions", {"model": LARGE, "prompt": LONG_WORDS, "max_tokens": 2}),
    ("/openai/v1/chat/completions", {"model": LARGE, "messages": [{"role": "user", "content": "x"}],
                                     "temperature": 1e-40}),
]


def test_maximal_requests_under_mixed_load_are_all_answered_in_time(app):
    client, _, _ = app
    outcomes: list[tuple[str, float, int, httpx.Response]] = []
    stop = threading.Event()

    def loop(kind: str, cases: list, limit: int):
        with httpx.Client(base_url=client.base_url, timeout=TIMEOUT_S + 10) as c:
            for i in range(limit):
                if stop.is_set():
                    return
                route, payload = cases[i % len(cases)]
                t0 = time.monotonic()
                r = c.post(route, json=payload)
                outcomes.append((kind, time.monotonic() - t0, r.status_code, r))

    threads = [threading.Thread(target=loop, args=("maximal", [MAXIMAL], 3), daemon=True),
               threading.Thread(target=loop, args=("maximal", [MAXIMAL], 3), daemon=True),
               threading.Thread(target=loop, args=("normal", NORMAL, 12), daemon=True),
               threading.Thread(target=loop, args=("normal", NORMAL[::-1], 12), daemon=True),
               threading.Thread(target=loop, args=("broken", BROKEN, 6), daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    stop.set()
    assert not any(t.is_alive() for t in threads), "a client hung"
    for kind, seconds, status, r in outcomes:
        assert seconds <= TIMEOUT_S + 5, (kind, seconds, status)
        if kind == "broken":
            assert 400 <= status < 500, (status, r.text)
            check_error(status, r.headers, r.content)
        else:
            assert status == 200, (kind, status, r.text)  # nobody pays for another client's requests
    assert sum(kind == "maximal" for kind, *_ in outcomes) == 6
