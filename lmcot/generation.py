"""The generation Protocol every role uses, and its Hugging Face implementation.

A generator does two things: write text (k samples per prompt in one call) and score
a yes/no question by P("yes") from next-token logits, which is how the large LM
judges rationale quality without generating. Every call reports its token counts, so
the cost of each method (large-LM calls and tokens per question) is measured, not
estimated. Prompts are fitted to the model's input limit first (:mod:`lmcot.fitting`);
the prompt tokens reported are those of the fitted prompt the model received.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from lmcot.config import GenerationConfig, ModelSpec
from lmcot.fitting import FittedPrompt, PromptFitter


@dataclass(frozen=True)
class Generation:
    """The samples drawn for one prompt, with what they cost."""

    texts: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Usage:
    """Calls (one per prompt sent) and tokens spent by one model."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, g: Generation | "Usage") -> "Usage":
        if isinstance(g, Usage):
            self.calls += g.calls
            self.prompt_tokens += g.prompt_tokens
            self.completion_tokens += g.completion_tokens
        else:
            self.calls += 1
            self.prompt_tokens += g.prompt_tokens
            self.completion_tokens += g.completion_tokens
        return self

    def as_dict(self) -> dict:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


class Generator(Protocol):
    """What lmcot needs from a language model, whatever serves it."""

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
        """``n`` completions per prompt; greedy when ``temperature == 0`` (then n must be 1)."""
        ...

    def score_yes_no(self, prompts: Sequence[str]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) of the next token after each prompt."""
        ...


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so padding is small.

    >>> length_sorted_batches([5, 1, 4, 2], 2)
    [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class HFGenerator:
    """A transformers model behind the :class:`Generator` Protocol (CPU or one GPU)."""

    def __init__(self, spec: ModelSpec, batch_size: int = 8, loaded=None):
        from lmcot.models import load_model

        self.spec = spec
        self.batch_size = batch_size
        lm = loaded if loaded is not None else load_model(spec)
        self.model, self.tokenizer, self.family, self.device = lm.model, lm.tokenizer, lm.family, lm.device
        self.fitter = PromptFitter.for_model(spec, self.tokenizer, self.family, self.model.config)
        self._yes_ids, self._no_ids = self._answer_token_ids()

    # -- prompt handling ------------------------------------------------------------
    def fit(self, prompts: Sequence[str], reserve: int = 0) -> list[FittedPrompt]:
        """Each prompt as this model receives it (chat template, fitted to its input limit)."""
        return self.fitter.fit_all(prompts, reserve)

    def _encode(self, texts: list[str]):
        # Never truncate here: every text was fitted to the model's limit already.
        enc = self.tokenizer(texts, padding=True, truncation=False, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def encode_prompts(self, prompts: Sequence[str], reserve: int = 0) -> dict:
        """One padded batch of prompts on the model's device, fitted and formatted as ``generate``
        does (for callers that run ``model.generate`` themselves, e.g. to read log-probabilities)."""
        return self._encode([f.text for f in self.fit(prompts, reserve)])

    def _count_completion(self, ids: torch.Tensor) -> int:
        """Tokens generated up to and including the first end-of-sequence token (padding excluded)."""
        row = ids.tolist()
        eos = self.tokenizer.eos_token_id
        return row.index(eos) + 1 if eos in row else len(row)

    # -- Generator Protocol ---------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=None):
        if n > 1 and temperature <= 0:
            raise ValueError("n > 1 samples need temperature > 0 (greedy decoding gives one answer)")
        fitted = self.fit(prompts, reserve=max_new_tokens)
        texts, lengths = [f.text for f in fitted], [f.tokens for f in fitted]
        results: list[Generation | None] = [None] * len(texts)
        if seed is not None:
            torch.manual_seed(seed)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
        for batch in length_sorted_batches(lengths, max(1, self.batch_size // n)):
            enc = self._encode([texts[i] for i in batch])
            out = self.model.generate(
                **enc, max_new_tokens=max_new_tokens, num_return_sequences=n,
                pad_token_id=self.tokenizer.pad_token_id, **sampling,
            )
            if self.family == "causal":
                out = out[:, enc["input_ids"].shape[1]:]
            else:
                out = out[:, 1:]  # drop the decoder start token
            decoded = self.tokenizer.batch_decode(out, skip_special_tokens=True)
            for j, i in enumerate(batch):
                rows = range(j * n, (j + 1) * n)
                results[i] = Generation(
                    texts=tuple(decoded[r].strip() for r in rows),
                    prompt_tokens=lengths[i],
                    completion_tokens=sum(self._count_completion(out[r]) for r in rows),
                )
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def score_yes_no(self, prompts):
        fitted = self.fit(prompts, reserve=1)
        texts, lengths = [f.text for f in fitted], [f.tokens for f in fitted]
        scores = [0.0] * len(texts)
        for batch in length_sorted_batches(lengths, self.batch_size):
            enc = self._encode([texts[i] for i in batch])
            if self.family == "seq2seq":
                start = self.model.generation_config.decoder_start_token_id
                if start is None:
                    start = self.model.config.decoder_start_token_id
                dec = torch.full((len(batch), 1), start, dtype=torch.long, device=self.device)
                logits = self.model(**enc, decoder_input_ids=dec).logits[:, -1]
            else:
                logits = self.model(**enc).logits[:, -1]
            logits = logits.float()
            yes = torch.logsumexp(logits[:, self._yes_ids], dim=-1)
            no = torch.logsumexp(logits[:, self._no_ids], dim=-1)
            for j, i in enumerate(batch):
                scores[i] = torch.sigmoid(yes[j] - no[j]).item()
        return scores

    def _answer_token_ids(self) -> tuple[list[int], list[int]]:
        """Token ids of the spellings of "yes" and "no" (with and without a leading space).

        Only spellings that are one whole token count: a spelling split into pieces ("n" + "o")
        would let a prefix shared with many other words vote. Where no spelling is one token,
        the first pieces are used.
        """

        def ids_of(words):
            encoded = [self.tokenizer.encode(w, add_special_tokens=False) for w in words]
            whole = {e[0] for e in encoded if len(e) == 1}
            return whole or {e[0] for e in encoded if e}

        yes, no = ids_of(["yes", "Yes", " yes", " Yes"]), ids_of(["no", "No", " no", " No"])
        shared = yes & no
        yes, no = sorted(yes - shared), sorted(no - shared)
        if not yes or not no:
            raise ValueError(f"the tokenizer of {self.spec.name_or_path} cannot tell 'yes' from 'no' by first token")
        return yes, no


def make_generator(spec: ModelSpec, gen: GenerationConfig | None = None) -> Generator:
    """The generator for a model spec's backend (``hf``, ``vllm`` or ``openai``)."""
    batch_size = (gen or GenerationConfig()).batch_size
    if spec.backend == "hf":
        return HFGenerator(spec, batch_size=batch_size)
    if spec.backend == "openai":
        from lmcot.openai_backend import OpenAIGenerator

        return OpenAIGenerator(spec)
    if spec.backend == "vllm":
        from lmcot.vllm_backend import VLLMGenerator

        return VLLMGenerator(spec, batch_size=batch_size)
    raise ValueError(f"unknown backend {spec.backend!r}")
