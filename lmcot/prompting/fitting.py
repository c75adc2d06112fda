"""One prompt-budget rule for every model: the prompt reaches the model whole, or not at all.

Every role (teacher, small LM, large LM, judge) and every backend (HF, vLLM, OpenAI)
sends its prompts through a :class:`PromptFitter` built for the model that reads them:

- the model's input limit comes from its tokenizer and config (FLAN-T5 declares
  ``model_max_length`` 512; Qwen2.5 its 32,768 positions), or from the model spec's
  ``max_input_tokens`` when set;
- the prompt is counted exactly as the model receives it: chat template applied,
  special tokens (T5's ``</s>``) included; a causal model also needs room for the
  tokens it will generate (``reserve``);
- when it is too long, only the context is shortened (whole paragraph lines first,
  then tokens of the first line that does not fit, by the one shortening rule of
  :func:`lmcot.datasets.context.shorten_lines`): the instruction, the question,
  the rationale and the answer cue always survive;
- a prompt that cannot fit even with an empty context, or a plain string over the
  limit, raises :class:`PromptTooLong` naming the model, the limit and the field.

Nothing truncates silently afterwards: generators encode with ``truncation=False``, and
the token counts they report are those of the fitted prompt. Distillation and
refinement fit their training prompts with the same fitter class and limit as the
generator that later serves the model, so the small LM learns from what it will see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from lmcot.datasets.context import shorten_lines

UNBOUNDED = 1_000_000
"""Tokenizers without a real limit declare a huge ``model_max_length`` (about 1e30)."""

CHARS_PER_TOKEN = 4
"""For an API model without a local tokenizer, tokens are estimated from characters."""


class PromptTooLong(ValueError):
    """A prompt does not fit its model even with an empty context."""


@dataclass(frozen=True)
class FittedPrompt:
    """What the model receives: the formatted text and its exact token count."""

    text: str
    tokens: int
    context_cut: bool = False


def input_limit(tokenizer=None, model_config=None, override: int = 0) -> int:
    """The most tokens the model reads: ``override`` if set, else the tokenizer's declared
    ``model_max_length`` and the config's position table, whichever is smaller; 0 if unknown.

    >>> class Tok: model_max_length = 512
    >>> class Cfg: max_position_embeddings = 32768
    >>> input_limit(Tok(), None), input_limit(None, Cfg()), input_limit(Tok(), Cfg(), override=2048)
    (512, 32768, 2048)
    """
    if override > 0:
        return override
    limits = []
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < UNBOUNDED:
        limits.append(declared)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    return min(limits) if limits else 0


class PromptFitter:
    """Fits prompts to one model's input limit (see the module docstring for the rule)."""

    def __init__(self, *, model: str, limit: int, tokenizer=None, family: str = "seq2seq",
                 chat_template: bool = True, field: str = "max_input_tokens"):
        self.model, self.limit, self.tokenizer, self.family = model, limit, tokenizer, family
        self.chat_template = chat_template
        self.field = field

    @classmethod
    def for_model(cls, spec, tokenizer, family: str, model_config=None, field: str = "") -> "PromptFitter":
        """The fitter of a loaded (or tokenizer-only) model described by a ``ModelSpec``."""
        return cls(model=spec.name_or_path, limit=input_limit(tokenizer, model_config, spec.max_input_tokens),
                   tokenizer=tokenizer, family=family, chat_template=spec.chat_template,
                   field=field or "max_input_tokens of this model's spec (small.* or large.*)")

    # -- what the model receives ----------------------------------------------------------
    def format(self, text: str) -> str:
        """``text`` as the model reads it: wrapped in the chat template for a causal chat model."""
        tok = self.tokenizer
        if self.family == "causal" and self.chat_template and getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": str(text)}], tokenize=False,
                                           add_generation_prompt=True)
        return str(text)

    def count(self, formatted: str) -> int:
        """Tokens of an already formatted prompt, special tokens included."""
        if self.tokenizer is None:
            return math.ceil(len(formatted) / CHARS_PER_TOKEN)
        return len(self.tokenizer(formatted, verbose=False)["input_ids"])

    def budget(self, reserve: int = 0) -> int:
        """Prompt tokens allowed; a causal model shares its positions with the ``reserve`` new tokens."""
        if not self.limit:
            return 0
        return self.limit - reserve if self.family == "causal" else self.limit

    # -- fitting --------------------------------------------------------------------------
    def fit(self, prompt: str, reserve: int = 0) -> FittedPrompt:
        """The formatted prompt within :meth:`budget`; only a :class:`~lmcot.prompting.prompts.Prompt`'s
        context is ever shortened. Raises :class:`PromptTooLong` when that is not enough."""
        text = self.format(prompt)
        tokens = self.count(text)
        budget = self.budget(reserve)
        if not budget or tokens <= budget:
            return FittedPrompt(text, tokens)
        render = getattr(prompt, "render", None)
        context = getattr(prompt, "context", "")
        if render is None or not context:
            raise self._too_long(prompt, tokens, budget, reserve, "and has no context that could be shortened")

        def fits(ctx: str) -> bool:
            return self.count(self.format(render(ctx))) <= budget

        if not fits(""):
            empty = self.count(self.format(render("")))
            raise self._too_long(prompt, empty, budget, reserve, "even with an empty context")
        fitted = self._fit_context(context, fits)
        text = self.format(render(fitted))
        return FittedPrompt(text, self.count(text), context_cut=True)

    def fit_all(self, prompts, reserve: int = 0) -> list[FittedPrompt]:
        return [self.fit(p, reserve) for p in prompts]

    def _fit_context(self, context: str, fits: Callable[[str], bool]) -> str:
        """Whole lines (paragraphs) first, then a prefix of the first line that does not fit
        (by tokens; by words for an API model without a tokenizer): :func:`shorten_lines`."""
        lines, tok = context.split("\n"), self.tokenizer

        def by_tokens(k: int) -> tuple[int, Callable[[int], str]]:
            if tok is None:
                words = lines[k].split(" ")
                return len(words), lambda j: " ".join(words[:j])
            ids = tok(lines[k], add_special_tokens=False)["input_ids"]
            return len(ids), lambda j: tok.decode(ids[:j], skip_special_tokens=True).strip()

        return shorten_lines(lines, fits, by_tokens)

    def _too_long(self, prompt, tokens: int, budget: int, reserve: int, why: str) -> PromptTooLong:
        role = getattr(prompt, "role", "") or "given"
        room = f" ({self.limit} minus {reserve} tokens to generate)" if budget != self.limit else ""
        return PromptTooLong(
            f"the {role} prompt for {self.model} needs {tokens} tokens {why}, over the model's input limit of "
            f"{budget}{room}: raise {self.field} (the model must have been trained on, or position-extrapolate "
            "to, that length), or shorten the question/rationale (e.g. generation.rationale_max_new_tokens)"
        )
