"""A generation backend for any OpenAI-compatible server: the large LM as a black box.

The paper's large LM may be an API; this backend lets every role (teacher, answerer,
judge) talk to one through the :class:`~lmcot.models.generation.Generator` Protocol. It speaks
plain HTTP with httpx (no SDK), so it works against OpenAI, vLLM, TGI, SGLang and
lmcot's own Serve ``Answerer`` alike:

- ``generate`` posts one ``/completions`` request per prompt (``n``, ``max_tokens``,
  ``temperature``, ``top_p``, ``seed``), at most ``spec.max_concurrency`` in flight,
  and reports the server's own ``usage`` token counts.
- ``score_yes_no`` asks for one greedy token with ``logprobs`` and reads P(yes) from the
  returned top alternatives; a server that returns no logprobs fails clearly.
- 429, 5xx and connection errors are retried with bounded exponential backoff and
  jitter (honouring ``Retry-After``); other 4xx fail at once with the server's message.

The API key is read from the environment variable named by ``spec.api_key_env`` and
is never stored in a config. No key means no ``Authorization`` header (local servers).
"""

from __future__ import annotations

import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import httpx

from lmcot.config import ModelSpec
from lmcot.prompting.fitting import PromptFitter
from lmcot.models.generation import Generation

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_YES, _NO = "yes", "no"


class OpenAIError(RuntimeError):
    """The server refused or failed a request; the message says which and what to check."""


def _word(token: str) -> str:
    """A returned token as a bare lower-case word (BPE/SentencePiece space marks removed)."""
    return token.replace("\u2581", " ").replace("\u0120", " ").strip().lower()


def yes_probability(top_logprobs: dict[str, float]) -> float:
    """P(yes) / (P(yes) + P(no)) from one position's top alternatives (token -> logprob).

    Spellings are merged (``Yes``, `` yes``...). When one side is missing from the list,
    its mass is bounded by the least likely listed token (it ranked below all of them);
    when both are missing there is no evidence either way and the result is 0.5.

    >>> round(yes_probability({" Yes": math.log(0.6), " No": math.log(0.2), "Maybe": math.log(0.1)}), 3)
    0.75
    >>> yes_probability({"The": -0.1})
    0.5
    >>> round(yes_probability({"yes": math.log(0.9), "so": math.log(0.05)}), 3)
    0.947
    """
    yes = sum(math.exp(lp) for t, lp in top_logprobs.items() if _word(t) == _YES)
    no = sum(math.exp(lp) for t, lp in top_logprobs.items() if _word(t) == _NO)
    if yes == 0 and no == 0:
        return 0.5
    floor = min((math.exp(lp) for lp in top_logprobs.values()), default=0.0)
    yes, no = yes or floor, no or floor
    return yes / (yes + no)


def backoff_delay(attempt: int, base_s: float, max_s: float, retry_after: float | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): ``base * 2**attempt`` with jitter, capped.

    A server's ``Retry-After`` is honoured when longer (still capped at ``max_s``).

    >>> 0.5 <= backoff_delay(0, 1.0, 30.0) <= 1.0
    True
    >>> backoff_delay(10, 1.0, 4.0) <= 4.0
    True
    >>> backoff_delay(0, 0.1, 5.0, retry_after=3.0)
    3.0
    """
    delay = min(max_s, base_s * 2**attempt) * (0.5 + random.random() / 2)
    if retry_after is not None:
        delay = max(delay, min(max_s, retry_after))
    return delay


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _message(response: httpx.Response) -> str:
    """The server's error message (OpenAI ``{"error": {"message"}}``, FastAPI ``detail``, or text)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if "detail" in body:
            return str(body["detail"])[:300]
    return str(body)[:300]


class OpenAIGenerator:
    """:class:`~lmcot.models.generation.Generator` over an OpenAI-compatible ``/completions`` endpoint."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 20.0,
        top_logprobs: int = 5,
    ):
        if not spec.base_url:
            raise ValueError("backend=openai needs base_url (model spec), e.g. http://127.0.0.1:8000/v1")
        if max_retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise ValueError("max_retries and backoff_s must be >= 0 and timeout_s > 0")
        self.spec = spec
        self.model = spec.name_or_path
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.top_logprobs = top_logprobs
        key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(
            base_url=spec.base_url.rstrip("/"), headers=headers, timeout=timeout_s,
            limits=httpx.Limits(max_connections=spec.max_concurrency, max_keepalive_connections=spec.max_concurrency),
        )
        self._pool = ThreadPoolExecutor(spec.max_concurrency, thread_name_prefix="lmcot-openai")
        # No local tokenizer: with max_input_tokens set, contexts are fitted by a character estimate;
        # without it, prompts go whole and the endpoint is the judge of its own context window.
        self.fitter = PromptFitter(model=spec.name_or_path, limit=spec.max_input_tokens, family="causal",
                                   field="max_input_tokens of this model's spec (the endpoint's context window)")

    def close(self) -> None:
        """Close the connection pool and worker threads."""
        self._pool.shutdown(wait=False)
        self._client.close()

    def __enter__(self) -> "OpenAIGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- HTTP -------------------------------------------------------------------------
    def _post(self, path: str, payload: dict) -> dict:
        """POST with bounded retries on 429/5xx/connection errors; other errors raise at once."""
        url = f"{self._client.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            response = None
            try:
                response = self._client.post(path, json=payload)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError:
                        raise OpenAIError(f"{url} answered {response.status_code} with non-JSON: {response.text[:200]!r}") from None
                problem = f"HTTP {response.status_code}: {_message(response)}"
                if response.status_code not in RETRY_STATUS:
                    raise OpenAIError(f"{url}: {problem}{self._hint(response.status_code)}")
            if attempt == self.max_retries:
                raise OpenAIError(f"{url}: gave up after {attempt + 1} attempts; last error {problem}")
            time.sleep(backoff_delay(attempt, self.backoff_s, self.max_backoff_s, _retry_after(response)))
        raise AssertionError("unreachable")

    def _hint(self, status: int) -> str:
        if status in (401, 403):
            return f" (set the API key in ${self.spec.api_key_env}, the model spec's api_key_env)"
        if status == 404:
            return f" (check base_url {self.spec.base_url!r}, usually ending in /v1, and the model name {self.model!r})"
        return ""

    def _complete(self, payload: dict) -> dict:
        body = self._post("/completions", {"model": self.model, **payload})
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or not choices:
            raise OpenAIError(f"{self.spec.base_url}/completions returned no choices: {str(body)[:200]}")
        body["choices"] = sorted(choices, key=lambda c: c.get("index", 0))
        return body

    # -- Generator Protocol -------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Generation]:
        """``n`` completions per prompt, one request per prompt, ``max_concurrency`` at once."""
        if n > 1 and temperature <= 0:
            raise ValueError("n > 1 samples need temperature > 0 (greedy decoding gives one answer)")
        payload = {"max_tokens": max_new_tokens, "n": n, "temperature": temperature, "top_p": top_p}
        if seed is not None:
            payload["seed"] = seed

        def one(prompt: str) -> Generation:
            body = self._complete({"prompt": prompt, **payload})
            if len(body["choices"]) != n:
                raise OpenAIError(f"asked {self.spec.base_url} for n={n} completions, got {len(body['choices'])}")
            usage = body.get("usage") or {}
            return Generation(
                texts=tuple(str(c.get("text", "")).strip() for c in body["choices"]),
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )

        return list(self._pool.map(one, [f.text for f in self.fitter.fit_all(prompts, reserve=max_new_tokens)]))

    def score_yes_no(self, prompts: Sequence[str]) -> list[float]:
        """P(yes) of the next token, from ``logprobs`` of one greedy token (see :func:`yes_probability`)."""

        def one(prompt: str) -> float:
            body = self._complete({"prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                                   "logprobs": self.top_logprobs})
            logprobs = body["choices"][0].get("logprobs") or {}
            top = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
            if not top or not isinstance(top[0], dict):
                raise OpenAIError(
                    f"{self.spec.base_url} returned no top logprobs for model {self.model!r}: score_yes_no "
                    "(the rationale judge) needs a server that supports logprobs (vLLM, lmcot serve, or "
                    "an OpenAI completions model); use backend hf for the judge otherwise"
                )
            return yes_probability({str(t): float(lp) for t, lp in top[0].items()})

        return list(self._pool.map(one, [f.text for f in self.fitter.fit_all(prompts, reserve=1)]))
