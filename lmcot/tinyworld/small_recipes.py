"""The small T5's pretraining recipes: which question-level tasks its mixture holds, by name.

Why names: each recipe measured on the tuning worlds (``docs/design.md``, ``docs/tuning/grounding.json``)
stays reproducible from this code with ``tools/pretrain_tiny_world.py --small-recipe NAME``; the
default, ``reasoned``, is the one of the weights the package ships. Every recipe keeps the lines
(whole-line denoising, copying, continuation) and the random copies of :mod:`lmcot.tinyworld.pairs`; they
differ in what is built from each pretraining question:

- ``extraction``: extraction (one or two entities in, their sentences out), with two defects (targets in
  the dataset's paragraph order; a few two-entity targets cut at the target length): the earlier shipped
  small T5's recipe;
- ``fixed``: the same extraction without the defects;
- ``evidence``: ``fixed`` plus the supporting-facts task (question and context in, the sentences the
  question needs out, verbatim, in the reasoning's order);
- ``reasoned``: ``fixed`` plus the supporting facts followed by the comparison step where the question
  compares (the tiny world's gold chain of thought), with targets up to 192 tokens (a 2Wiki
  bridge-comparison chain is 128-175).
"""

from __future__ import annotations

import dataclasses
import random

from lmcot.datasets.data import Example
from lmcot.tinyworld.pairs import MAX_TARGET, SMALL_TASK_WEIGHTS, extraction_pairs

EVIDENCE_PROMPT = ("Copy the sentences of the context that the question needs.\n\nContext:\n{context}\n\n"
                   "Question: {question}\nSentences:")
"""The supporting-facts task's source: an instruction of its own, so the small LM's rationale prompt is
first seen in distillation."""
REASONED_PROMPT = ("Copy the sentences of the context that the question needs, then compare what they say if "
                   "the question compares.\n\nContext:\n{context}\n\nQuestion: {question}\nSentences:")
"""The ``reasoned`` recipe's source: the same, and the comparison step after the facts."""
EVIDENCE_WEIGHT = 3
"""Supporting-facts pairs per question, as many as single-entity extraction's."""


@dataclasses.dataclass(frozen=True)
class SmallRecipe:
    """What the small T5 learns from each pretraining question (see the module docstring)."""

    fixed_extraction: bool = False
    """Extraction targets in the context's order, two-entity targets from their own paragraphs only."""
    evidence: str = ""
    """``""`` (none), ``"facts"`` (the supporting facts) or ``"reasoned"`` (the facts and the comparison step)."""
    max_target: int = MAX_TARGET
    """Target tokens kept (longer targets are cut)."""

    @property
    def task_weights(self) -> dict[str, float]:
        """Pairs per line or question of each task (:data:`lmcot.tinyworld.pairs.SMALL_TASK_WEIGHTS`, plus
        the supporting-facts task when the recipe has it)."""
        return dict(SMALL_TASK_WEIGHTS, evidence=EVIDENCE_WEIGHT) if self.evidence else dict(SMALL_TASK_WEIGHTS)

    def question_pairs(self, rng: random.Random, ex: Example, context: str, world) -> list[tuple[str, str, str]]:
        """(task, source, target) of one pretraining question and its training context."""
        out = extraction_pairs(rng, ex, context, fixed=self.fixed_extraction)
        if self.evidence:
            out += evidence_pairs(ex, context, world if self.evidence == "reasoned" else None)
        return out


SMALL_RECIPES = {"extraction": SmallRecipe(), "fixed": SmallRecipe(fixed_extraction=True),
                 "evidence": SmallRecipe(fixed_extraction=True, evidence="facts"),
                 "reasoned": SmallRecipe(fixed_extraction=True, evidence="reasoned", max_target=192)}


def evidence_pairs(ex: Example, context: str, world=None) -> list[tuple[str, str, str]]:
    """The supporting-facts task for one question: its context and question in, the supporting-fact
    sentences out, verbatim and in the dataset's order (the reasoning's: the first hop's fact before the
    second's), when the context keeps every one of them whole. With ``world``, the comparison step
    follows (:func:`lmcot.tinyworld.reasoning.reasoned_rationale`).

    HotpotQA's own supporting-facts task, on pretraining worlds: which sentences a question needs, and
    following a bridge entity to its paragraph. The paper's small LM (FLAN-T5) was instruction-tuned on
    reading tasks of this kind; the tiny one learns it here."""
    from lmcot.tinyworld.reasoning import reasoned_rationale

    facts = ex.supporting_sentences
    if not facts or not all(s in context for s in facts):
        return []
    if world is None:
        return [("evidence", EVIDENCE_PROMPT.format(context=context, question=ex.question), ex.evidence)]
    return [("evidence", REASONED_PROMPT.format(context=context, question=ex.question), reasoned_rationale(world, ex))]
