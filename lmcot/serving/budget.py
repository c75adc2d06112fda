"""A request's worst-case cost in new tokens, checked before any model runs.

The cost is the product of the request's factors (prompts x samples x new tokens per sample) and
must fit ``serve.max_request_tokens``; a request over it is refused with the status of the route's
bad input, naming the factor the client sent (``k``, ``max_tokens``, ``max_completion_tokens``).
A ``/v1/answer`` sample's new tokens are what the role table (:data:`lmcot.prompting.roles.ROLES`)
reserves for the replies the method asks for, so the check counts exactly what a run would
generate. Left out: prompt tokens (the replica's admission check counts those against the model's
input limit) and the cost of waiting.
"""

from __future__ import annotations

from lmcot.config import GenerationConfig, ServeConfig
from lmcot.prompting.roles import METHOD_ROLES, ROLES
from lmcot.serving.errors import ApiError

def sample_tokens(method: str, gen: GenerationConfig) -> int:
    """New tokens one sample of ``method`` may generate, by the role table.

    >>> gen = GenerationConfig(rationale_max_new_tokens=8, answer_max_new_tokens=4)
    >>> [sample_tokens(m, gen) for m in ("standard", "cot", "lm_guided")]
    [4, 12, 12]
    """
    return sum(ROLES[role].reserve(gen) for role in METHOD_ROLES[method])


def check_budget(limits: ServeConfig, param: str, status: int, **factors: int) -> None:
    """Refuse a request whose worst case, the product of ``factors`` in new tokens, is over ``serve.max_request_tokens``.

    >>> check_budget(ServeConfig(max_request_tokens=100), "max_tokens", 400, prompts=2, n=2, max_tokens=25)
    >>> check_budget(ServeConfig(max_request_tokens=100), "max_tokens", 400, prompts=2, n=2, max_tokens=26)
    Traceback (most recent call last):
    ...
    lmcot.serving.errors.ApiError: max_tokens: this request may generate prompts=2 x n=2 x max_tokens=26 = 104 tokens; the limit is 100 (serve.max_request_tokens): lower max_tokens or another factor
    """
    cost = 1
    for value in factors.values():
        cost *= value
    if cost > limits.max_request_tokens:
        product = " x ".join(f"{k}={v}" for k, v in factors.items())
        raise ApiError(status, f"{param}: this request may generate {product} = {cost} tokens; the limit is "
                               f"{limits.max_request_tokens} (serve.max_request_tokens): lower {param} or another "
                               "factor", param, code="request_too_large")
