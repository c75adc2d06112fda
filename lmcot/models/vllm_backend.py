"""A causal large LM served by vLLM inside the process, behind the :class:`~lmcot.models.generation.Generator` Protocol.

The GPU path for a causal teacher (``large.backend: vllm``): each Ray Data actor of
``lmcot generate-rationales`` owns one vLLM engine on its GPU (``rationales.gpus_per_actor: 1``),
and vLLM's continuous batching replaces the length-sorted batches of the HF generator.
vLLM dropped encoder-decoder models, so FLAN-T5 stays on ``backend: hf``. vLLM is
imported only when this backend is chosen, and its absence is a clear error.

``score_yes_no`` reads the next-token log-probabilities vLLM returns (its top
``YES_NO_LOGPROBS``); a spelling of "yes"/"no" outside them counts as impossible, and
P(yes) is 0.5 when neither appears.
"""

from __future__ import annotations

import math
from typing import Sequence

from lmcot.config import ModelSpec
from lmcot.prompting.fitting import PromptFitter
from lmcot.models.generation import Generation

YES_NO_LOGPROBS = 20
"""Next-token log-probabilities requested when scoring yes/no (vLLM's default cap)."""


class VLLMGenerator:
    """vLLM ``LLM`` engine for a causal model; ``batch_size`` is unused (vLLM batches continuously)."""

    def __init__(self, spec: ModelSpec, batch_size: int = 8):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError(
                f"large.backend=vllm needs vLLM ({exc}); install it on the GPU nodes with "
                "`pip install -c constraints.txt -e '.[vllm]'`, or use backend: hf"
            ) from None
        from lmcot.models.loading import detect_family, resolve_model_path

        path = resolve_model_path(spec.name_or_path)
        family = detect_family(path, spec.family, spec.revision)
        if family != "causal":
            raise ValueError(f"{spec.name_or_path} is a {family} model and vLLM serves only causal LMs: "
                             "use backend: hf for it")
        self.spec, self.batch_size, self.family = spec, batch_size, family
        self.llm = LLM(model=path, dtype=spec.dtype, revision=spec.revision or None, trust_remote_code=False,
                       gpu_memory_utilization=spec.gpu_memory_utilization)
        self.tokenizer = self.llm.get_tokenizer()
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, revision=spec.revision or None, trust_remote_code=False)
        self.fitter = PromptFitter.for_model(spec, self.tokenizer, family, config)
        self._yes, self._no = self._answer_token_ids()

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, n: int = 1, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[Generation]:
        """``n`` completions per prompt in one vLLM call (greedy when ``temperature == 0``)."""
        from vllm import SamplingParams

        if n > 1 and temperature <= 0:
            raise ValueError("n > 1 samples need temperature > 0 (greedy decoding gives one answer)")
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                max_tokens=max_new_tokens, seed=seed)
        fitted = self.fitter.fit_all(prompts, reserve=max_new_tokens)
        outputs = self.llm.generate([f.text for f in fitted], params, use_tqdm=False)
        return [
            Generation(texts=tuple(c.text.strip() for c in out.outputs), prompt_tokens=len(out.prompt_token_ids),
                       completion_tokens=sum(len(c.token_ids) for c in out.outputs))
            for out in outputs
        ]

    def score_yes_no(self, prompts: Sequence[str]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) of the next token, from vLLM's top next-token log-probabilities."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=YES_NO_LOGPROBS)
        outputs = self.llm.generate([f.text for f in self.fitter.fit_all(prompts, reserve=1)], params,
                                    use_tqdm=False)
        scores = []
        for out in outputs:
            top = out.outputs[0].logprobs[0] if out.outputs[0].logprobs else {}
            yes = _logsumexp([top[i].logprob for i in self._yes if i in top])
            no = _logsumexp([top[i].logprob for i in self._no if i in top])
            scores.append(0.5 if yes == no == -math.inf else 1.0 / (1.0 + math.exp(min(no - yes, 700.0))))
        return scores

    def _answer_token_ids(self) -> tuple[set[int], set[int]]:
        def first_ids(words):
            return {ids[0] for w in words if (ids := self.tokenizer.encode(w, add_special_tokens=False))}

        yes, no = first_ids(["yes", "Yes", " yes", " Yes"]), first_ids(["no", "No", " no", " No"])
        return yes - no, no - yes


def _logsumexp(values: list[float]) -> float:
    """log(sum(exp(v))) of a list; -inf for an empty one.

    >>> round(_logsumexp([0.0, 0.0]), 4), _logsumexp([])
    (0.6931, -inf)
    """
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))
