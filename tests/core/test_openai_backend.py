"""OpenAIGenerator against a scripted HTTP server on 127.0.0.1: retries, backoff, usage, logprobs, auth.

The server is a real ``http.server`` in a thread that answers from a script (status,
body, delay) so each test can make it fail in a chosen way. The generator against
lmcot's own Serve ``Answerer`` is tested in ``tests/stages/test_serve.py``.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmcot.config import ModelSpec
from lmcot.models.openai_backend import OpenAIError, OpenAIGenerator, yes_probability


def completion(texts, prompt_tokens=7, completion_tokens=3, logprobs=None):
    return {
        "id": "cmpl-1", "object": "text_completion", "model": "m",
        "choices": [{"index": i, "text": t, "finish_reason": "length", "logprobs": logprobs}
                    for i, t in enumerate(texts)][::-1],  # out of order: the client must sort by index
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class ScriptedServer:
    """Answers POSTs from ``script`` (a list of (status, body, headers)); the last entry repeats."""

    def __init__(self, script, delay_s: float = 0.0):
        self.script = list(script)
        self.delay_s = delay_s
        self.requests: list[dict] = []
        self.times: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "body": body,
                                            "auth": self.headers.get("Authorization")})
                    server.times.append(time.monotonic())
                    status, payload, headers = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                time.sleep(server.delay_s)
                data = json.dumps(payload(body) if callable(payload) else payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                with server.lock:
                    server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def make(url, **kw):
    spec_kw = {k: kw.pop(k) for k in ("api_key_env", "max_concurrency") if k in kw}
    spec = ModelSpec("served-model", backend="openai", base_url=url, **spec_kw)
    return OpenAIGenerator(spec, backoff_s=kw.pop("backoff_s", 0.01), max_backoff_s=0.2, **kw)


def test_generate_sends_sampling_fields_and_reports_usage(monkeypatch):
    monkeypatch.setenv("LMCOT_TEST_KEY", "sk-test")
    with ScriptedServer([(200, lambda b: completion([f"{b['prompt']}-{i} " for i in range(b["n"])]), None)]) as srv:
        with make(srv.url, api_key_env="LMCOT_TEST_KEY") as gen:
            out = gen.generate(["p1", "p2"], max_new_tokens=9, n=3, temperature=0.7, top_p=0.9, seed=5)
    assert [g.texts for g in out] == [("p1-0", "p1-1", "p1-2"), ("p2-0", "p2-1", "p2-2")]
    assert all(g.prompt_tokens == 7 and g.completion_tokens == 3 for g in out)
    sent = sorted(srv.requests, key=lambda r: r["body"]["prompt"])
    assert sent[0]["path"] == "/v1/completions"
    assert sent[0]["body"] == {"model": "served-model", "prompt": "p1", "max_tokens": 9, "n": 3,
                               "temperature": 0.7, "top_p": 0.9, "seed": 5}
    assert sent[0]["auth"] == "Bearer sk-test"


def test_no_key_sends_no_authorization_header(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ScriptedServer([(200, completion(["a"]), None)]) as srv:
        make(srv.url).generate(["p"], max_new_tokens=2)
    assert srv.requests[0]["auth"] is None


def test_429_then_200_is_retried_with_backoff():
    script = [(429, {"error": {"message": "slow down"}}, None)] * 2 + [(200, completion(["ok"]), None)]
    with ScriptedServer(script) as srv:
        out = make(srv.url, backoff_s=0.05).generate(["p"], max_new_tokens=2)
    assert out[0].texts == ("ok",)
    assert len(srv.requests) == 3
    gaps = [b - a for a, b in zip(srv.times, srv.times[1:])]
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05  # jittered 0.05 * 2**attempt, at least half of it


def test_retry_after_header_is_honoured():
    script = [(503, {"detail": "busy"}, {"Retry-After": "0.15"}), (200, completion(["ok"]), None)]
    with ScriptedServer(script) as srv:
        make(srv.url).generate(["p"], max_new_tokens=2)
    assert srv.times[1] - srv.times[0] >= 0.15


def test_retries_are_bounded_and_name_the_last_error():
    with ScriptedServer([(500, {"error": {"message": "boom"}}, None)]) as srv:
        with pytest.raises(OpenAIError, match=r"gave up after 3 attempts.*HTTP 500: boom"):
            make(srv.url, max_retries=2).generate(["p"], max_new_tokens=2)
    assert len(srv.requests) == 3


def test_client_errors_are_not_retried_and_hint_at_the_fix():
    with ScriptedServer([(401, {"error": {"message": "bad key"}}, None)]) as srv:
        with pytest.raises(OpenAIError, match=r"401: bad key.*\$MY_KEY"):
            make(srv.url, api_key_env="MY_KEY").generate(["p"], max_new_tokens=2)
    assert len(srv.requests) == 1
    with ScriptedServer([(404, {"detail": "Not Found"}, None)]) as srv:
        with pytest.raises(OpenAIError, match="check base_url"):
            make(srv.url).generate(["p"], max_new_tokens=2)


def test_connection_errors_are_retried_then_fail():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gen = make(f"http://127.0.0.1:{port}/v1", max_retries=2)
    with pytest.raises(OpenAIError, match="gave up after 3 attempts.*ConnectError"):
        gen.generate(["p"], max_new_tokens=2)


def test_concurrency_is_bounded_by_max_concurrency():
    with ScriptedServer([(200, completion(["x"]), None)], delay_s=0.05) as srv:
        make(srv.url, max_concurrency=2).generate([f"p{i}" for i in range(8)], max_new_tokens=2)
    assert srv.max_in_flight == 2


def test_wrong_number_of_choices_and_greedy_n_fail_clearly():
    with ScriptedServer([(200, completion(["only one"]), None)]) as srv:
        with pytest.raises(OpenAIError, match="n=2 completions, got 1"):
            make(srv.url).generate(["p"], max_new_tokens=2, n=2, temperature=0.5)
        with pytest.raises(ValueError, match="temperature > 0"):
            make(srv.url).generate(["p"], max_new_tokens=2, n=2)


def test_score_yes_no_reads_top_logprobs():
    top = [{" yes": math.log(0.3), " No": math.log(0.1), "the": math.log(0.2)}]
    lp = {"tokens": [" yes"], "token_logprobs": [math.log(0.3)], "top_logprobs": top}
    with ScriptedServer([(200, completion(["yes"], logprobs=lp), None)]) as srv:
        scores = make(srv.url).score_yes_no(["q1", "q2"])
    assert scores == pytest.approx([0.75, 0.75])
    assert srv.requests[0]["body"]["logprobs"] == 5 and srv.requests[0]["body"]["max_tokens"] == 1


def test_score_yes_no_without_logprobs_is_a_clear_error():
    with ScriptedServer([(200, completion(["yes"]), None)]) as srv:
        with pytest.raises(OpenAIError, match="needs a server that supports logprobs"):
            make(srv.url).score_yes_no(["q"])


def test_yes_probability_merges_spellings():
    assert yes_probability({"Yes": math.log(0.2), "\u2581yes": math.log(0.2), "no": math.log(0.1)}) == pytest.approx(0.8)
