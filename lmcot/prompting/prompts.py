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


class Prompt(str):
    """A prompt that knows which part of it may be shortened: the context, and only the context.

    As a ``str`` it is the whole, unfitted prompt, so it can be logged, compared and sent
    anywhere a string goes (also through Ray). :mod:`lmcot.prompting.fitting` renders it again with a
    shorter context when the reading model's input limit asks for it; the instruction, the
    question, the rationale and the cue are always kept. A string that went through ``str``
    methods is a plain string again: it is sent whole or refused, never cut.

    >>> p = small_rationale_prompt("Who?", "A: one.\\nB: two.")
    >>> p.role, p.context.splitlines()
    ('small', ['A: one.', 'B: two.'])
    >>> p.render("A: one.").endswith("Context:\\nA: one.\\n\\nQuestion: Who?\\nRationale:")
    True
    """

    role: str
    context: str
    _template: str
    _fields: dict

    def __new__(cls, text: str = "", *, role: str = "", template: str = "", context: str = "",
                fields: dict | None = None):
        self = super().__new__(cls, text)
        self.role, self.context, self._template, self._fields = role, context, template, dict(fields or {})
        return self

    @classmethod
    def build(cls, role: str, template: str, context: str, **fields: str) -> "Prompt":
        return cls(template.format(context=context, **fields), role=role, template=template, context=context,
                   fields=fields)

    def render(self, context: str) -> str:
        """The prompt with ``context`` in place of its own (a shortened version of it)."""
        return self._template.format(context=context, **self._fields) if self._template else str(self)


def standard_prompt(question: str, context: str) -> Prompt:
    return Prompt.build("standard", STANDARD, context, question=question)


def cot_prompt(question: str, context: str) -> Prompt:
    return Prompt.build("cot", COT, context, question=question)


def teacher_rationale_prompt(question: str, context: str) -> Prompt:
    return Prompt.build("teacher", TEACHER_RATIONALE, context, question=question)


def small_rationale_prompt(question: str, context: str) -> Prompt:
    return Prompt.build("small", SMALL_RATIONALE, context, question=question)


def answer_from_rationale_prompt(question: str, context: str, rationale: str) -> Prompt:
    return Prompt.build("answer", ANSWER_FROM_RATIONALE, context, question=question, rationale=rationale.strip())


def judge_prompt(aspect: str, question: str, context: str, rationale: str) -> Prompt:
    """One yes/no question about one aspect; scored by P(yes) from next-token logits."""
    if aspect not in ASPECTS:
        raise KeyError(f"unknown aspect {aspect!r}; valid: {', '.join(ASPECTS)}")
    a = ASPECTS[aspect]
    return Prompt.build(f"judge:{aspect}", JUDGE, context, question=question, rationale=rationale.strip(),
                        definition=a.definition, question_about_aspect=a.question)


# An answer cue is a whole phrase ending in "is" or a colon: "So the answer is", "The final
# answer is:", "Final answer:", "Answer:". A bare word "answer" inside a sentence ("To answer
# this,", "Answers in Genesis", "Unanswered Questions") is never a cue.
_CUES = re.compile(
    r"(?<![\w'])(?:(?:so\s+)?the\s+(?:final\s+)?answer\s+is\b\s*:?|(?:final\s+)?answer\s*:)\s*",
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
    >>> parse_answer("Unanswered Questions"), parse_answer("Answers in Genesis"), parse_answer("The Answer")
    ('Unanswered Questions', 'Answers in Genesis', 'The Answer')
    >>> parse_answer("Final Answer (album)"), parse_answer("Final answer: Final Answer (album)")
    ('Final Answer (album)', 'Final Answer (album)')
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
    >>> split_rationale("B founded it. So the answer is: Answers in Genesis.")
    ('B founded it.', 'Answers in Genesis')
    >>> split_rationale("To answer this, note X. The answer is X. So the answer is: Y.")
    ('To answer this, note X. The answer is X.', 'Y')
    >>> split_rationale("To answer this, we need the founder's name.")
    ("To answer this, we need the founder's name.", None)
    """
    text = text.strip()
    matches = list(_CUES.finditer(text))
    if not matches:
        return text, None
    last = matches[-1]
    answer = _clean_answer(text[last.end():])
    rationale = text[: last.start()].strip()
    return rationale, (answer or None)
