"""The role table: for every prompt the project sends, which builder writes it, which model reads it,
and how many new tokens to reserve for the reply.

Every caller that builds a prompt or sizes a reply reads :data:`ROLES`: the method's calls, teacher
generation and its re-judging, the distillation pairs, refinement's rows and rollouts, the rewards,
``lmcot plan``'s budgets and ``lmcot prompts``' listing. So the plan checks and the listing print
exactly what a run sends. What the table leaves out: the HTTP edge's OpenAI chat prompts (the
caller writes those) and the tiny world's pretraining pairs, which are training data shaped like
these prompts, not prompts a run sends.

>>> [r.name for r in ROLES.values() if r.model == "small"]
['small']
>>> from lmcot.config import GenerationConfig
>>> gen = GenerationConfig(rationale_max_new_tokens=128, answer_max_new_tokens=24)
>>> {name: role.reserve(gen) for name, role in ROLES.items()}
{'teacher': 128, 'small': 128, 'answer': 24, 'standard': 24, 'cot': 152, 'judge': 1}
>>> [p.role for p in ROLES["judge"].prompts("Who?", "", "r")][:2]
['judge:factuality', 'judge:relevance']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lmcot.prompting import prompts

MODELS = ("small", "large")


@dataclass(frozen=True)
class Role:
    """One kind of prompt: its builder, the model that reads it and the reply it makes room for."""

    name: str
    model: str
    """``small`` or ``large``: the config section (``small`` / ``large``) of the model that reads it."""
    builder: Callable[..., prompts.Prompt]
    """``builder(question, context)``, plus ``rationale`` where :attr:`needs_rationale`, plus the
    aspect first for the judge (:func:`lmcot.prompting.prompts.judge_prompt`)."""
    new_tokens: Callable[[object], int]
    """The reply's length from a :class:`~lmcot.config.GenerationConfig`."""
    needs_rationale: bool = False
    per_aspect: bool = False
    """One prompt per aspect of :data:`lmcot.prompting.prompts.ASPECTS` (the judge)."""

    def reserve(self, gen) -> int:
        """New tokens to keep free after the prompt (and to ask the generator for)."""
        return self.new_tokens(gen)

    def build(self, question: str, context: str, rationale: str = "", aspect: str = "") -> prompts.Prompt:
        """One prompt of this role (``aspect`` names the judged aspect; ignored by other roles)."""
        args = (question, context, rationale) if self.needs_rationale else (question, context)
        return self.builder(aspect, *args) if self.per_aspect else self.builder(*args)

    def prompts(self, question: str, context: str, rationale: str = "") -> list[prompts.Prompt]:
        """Every prompt of this role for one question: one, or one per aspect for the judge."""
        aspects = tuple(prompts.ASPECTS) if self.per_aspect else ("",)
        return [self.build(question, context, rationale, a) for a in aspects]


def _rationale(gen) -> int:
    return gen.rationale_max_new_tokens


def _answer(gen) -> int:
    return gen.answer_max_new_tokens


ROLES: dict[str, Role] = {r.name: r for r in (
    Role("teacher", "large", prompts.teacher_rationale_prompt, _rationale),
    Role("small", "small", prompts.small_rationale_prompt, _rationale),
    Role("answer", "large", prompts.answer_from_rationale_prompt, _answer, needs_rationale=True),
    Role("standard", "large", prompts.standard_prompt, _answer),
    Role("cot", "large", prompts.cot_prompt, lambda gen: gen.rationale_max_new_tokens + gen.answer_max_new_tokens),
    Role("judge", "large", prompts.judge_prompt, lambda gen: 1, needs_rationale=True, per_aspect=True),
)}
"""Every role, in the order a run meets them (teacher rationales first)."""

METHOD_ROLES = {"standard": ("standard",), "cot": ("cot",), "lm_guided": ("small", "answer")}
"""The roles one sample of each answering method goes through, in order (what ``lmcot prompts --method``
prints and what the serving budget reserves per sample)."""


def rollout_tokens(refine, gen) -> int:
    """New tokens of a refinement rollout (the small LM's rationale): ``refine.max_new_tokens``,
    or the small role's reserve where that is 0.

    >>> from lmcot.config import GenerationConfig, RefineConfig
    >>> rollout_tokens(RefineConfig(), GenerationConfig(rationale_max_new_tokens=96))
    96
    >>> rollout_tokens(RefineConfig(max_new_tokens=8), GenerationConfig())
    8
    """
    return refine.max_new_tokens or ROLES["small"].reserve(gen)
