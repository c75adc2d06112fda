"""Prompt templates for every role, and robust answer parsing.

The paper does not publish its prompts; these follow the FLAN / CoT conventions its
models were trained with: an instruction, the context, the question, and for
reasoning the cue "Let's think step by step." ending in "So the answer is: X.".
Templates are plain ``str.format`` strings so they can be read and changed in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANSWER_CUE = "So the answer is:"

STANDARD = (
    "Answer the question using the context. Give only the answer.\n\n"
    "Context:\n{context}\n\nQuestion: {question}\nAnswer:"
)

COT = (
    "Answer the question using the context.\n\n"
    "Context:\n{context}\n\nQuestion: {question}\n"
    f"Let's think step by step, then finish with \"{ANSWER_CUE} <answer>.\"\n"
)

TEACHER_RATIONALE = (
    "Read the context and explain, step by step, the reasoning that leads to the answer "
    "of the question. Connect the facts from different paragraphs. "
    f"Finish with \"{ANSWER_CUE} <answer>.\"\n\n"
    "Context:\n{context}\n\nQuestion: {question}\nRationale:"
)

SMALL_RATIONALE = (
    "Write the reasoning needed to answer the question from the context.\n\n"
    "Context:\n{context}\n\nQuestion: {question}\nRationale:"
)

ANSWER_FROM_RATIONALE = (
    "Answer the question using the context and the rationale. Give only the answer.\n\n"
    "Context:\n{context}\n\nQuestion: {question}\nRationale: {rationale}\nAnswer:"
)

JUDGE = (
    "Context:\n{context}\n\nQuestion: {question}\nRationale: {rationale}\n\n"
    "{definition} {question_about_aspect} Answer yes or no.\nAnswer:"
)


@dataclass(frozen=True)
class Aspect:
    """A rationale quality the large LM judges with one yes/no question."""

    name: str
    definition: str
    question: str


# The eight aspects of the paper's rationale-oriented rewards.
ASPECTS: dict[str, Aspect] = {
    a.name: a
    for a in (
        Aspect("factuality", "A factual rationale states only facts supported by the context.",
               "Is the rationale factual?"),
        Aspect("relevance", "A relevant rationale uses the information needed to answer this question.",
               "Is the rationale relevant to the question?"),
        Aspect("logicality", "A logical rationale moves from facts to the conclusion by valid steps.",
               "Is the rationale logical?"),
        Aspect("consistency", "A consistent rationale does not contradict itself or the context.",
               "Is the rationale consistent?"),
        Aspect("coherence", "A coherent rationale's sentences connect into one line of reasoning.",
               "Is the rationale coherent?"),
        Aspect("fluency", "A fluent rationale is grammatical, well-formed English.",
               "Is the rationale fluent?"),
        Aspect("naturalness", "A natural rationale reads like something a person would write.",
               "Is the rationale natural?"),
        Aspect("readability", "A readable rationale is easy to follow and not repetitive.",
               "Is the rationale readable?"),
    )
}


def standard_prompt(question: str, context: str) -> str:
    return STANDARD.format(question=question, context=context)


def cot_prompt(question: str, context: str) -> str:
    return COT.format(question=question, context=context)


def teacher_rationale_prompt(question: str, context: str) -> str:
    return TEACHER_RATIONALE.format(question=question, context=context)


def small_rationale_prompt(question: str, context: str) -> str:
    return SMALL_RATIONALE.format(question=question, context=context)


def answer_from_rationale_prompt(question: str, context: str, rationale: str) -> str:
    return ANSWER_FROM_RATIONALE.format(question=question, context=context, rationale=rationale.strip())


def judge_prompt(aspect: str, question: str, context: str, rationale: str) -> str:
    """One yes/no question about one aspect; scored by P(yes) from next-token logits."""
    if aspect not in ASPECTS:
        raise KeyError(f"unknown aspect {aspect!r}; valid: {', '.join(ASPECTS)}")
    a = ASPECTS[aspect]
    return JUDGE.format(
        context=context, question=question, rationale=rationale.strip(),
        definition=a.definition, question_about_aspect=a.question,
    )


_CUES = re.compile(
    r"(?:so\s+the\s+(?:final\s+)?answer\s+is|the\s+(?:final\s+)?answer\s+is|final\s+answer|answer)\s*[:\-]?\s*",
    re.IGNORECASE,
)


def _clean_answer(text: str) -> str:
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = re.sub(r"^[\"'`*\s]+|[\"'`*\s]+$", "", text)
    text = re.sub(r"[.!,;:\s]+$", "", text)
    return text.strip()


def parse_answer(text: str) -> str:
    """The answer in a direct-answer completion: its first line, cue words and quotes removed.

    >>> parse_answer(" Paris.\\nQuestion: ...")
    'Paris'
    >>> parse_answer("The answer is: yes")
    'yes'
    """
    text = text.strip()
    matches = list(_CUES.finditer(text))
    if matches:
        text = text[matches[-1].end():]
    return _clean_answer(text)


def split_rationale(text: str) -> tuple[str, str | None]:
    """Split reasoning output into (rationale, answer); answer is None when none is stated.

    The answer is taken after the last answer cue ("So the answer is:", "the answer is",
    "Answer:"); the rationale is the text before it.

    >>> split_rationale("A was born in 1901. B in 1910. So the answer is: A.")
    ('A was born in 1901. B in 1910.', 'A')
    >>> split_rationale("no cue here")
    ('no cue here', None)
    """
    text = text.strip()
    matches = list(_CUES.finditer(text))
    if not matches:
        return text, None
    last = matches[-1]
    answer = _clean_answer(text[last.end():])
    rationale = text[: last.start()].strip()
    return rationale, (answer or None)
