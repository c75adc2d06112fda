"""The three ways of answering a multi-hop question, with optional self-consistency.

- ``standard``: the large LM answers directly.
- ``cot``: the large LM reasons ("Let's think step by step") and answers.
- ``lm_guided``: the small LM writes the rationale, the frozen large LM answers from it
  (Lee et al. 2024). Only the small LM is ever trained.

Two reference methods bound ``lm_guided`` from both sides: the large LM answers from the
gold supporting facts as its rationale (``gold_rationale``: an oracle, it reads the labels)
or from an empty rationale (``empty_rationale``).

With self-consistency ``k > 1``, k reasoning paths are sampled, each is answered, and the
normalised answers are majority-voted. Every function works on a batch of questions,
so each model sees one batched call per step however many questions and samples there are.
"""

from __future__ import annotations

from collections import Counter
import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

from lmcot.prompting import prompts
from lmcot.prompting.roles import ROLES
from lmcot.config import GenerationConfig
from lmcot.models.generation import Generation, Generator, Usage
from lmcot.scoring.metrics import normalize_answer


@dataclass(frozen=True)
class Question:
    """A question ready for prompting: its context already built and fitted."""

    id: str
    question: str
    context: str
    evidence: str = ""
    """The gold supporting-fact sentences; read only by the ``gold_rationale`` oracle."""


@dataclass
class MethodResult:
    """The voted answer of one question and what it cost each model."""

    id: str
    answer: str
    votes: dict[str, int]
    rationales: list[str]
    answers: list[str]
    usage: dict[str, Usage] = field(default_factory=lambda: {"small": Usage(), "large": Usage()})


def majority_vote(answers: Sequence[str]) -> tuple[str, dict[str, int]]:
    """Majority answer under official normalisation; ties go to the answer seen first.

    Empty answers only win when every answer is empty. Votes are keyed by the first
    spelling of each normalised answer.

    >>> majority_vote(["Paris", "the Paris", "London", "paris."])
    ('Paris', {'Paris': 3, 'London': 1})
    >>> majority_vote(["Oslo", "Bergen"])
    ('Oslo', {'Oslo': 1, 'Bergen': 1})
    >>> majority_vote(["", ""])
    ('', {})
    """
    spelling: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for a in answers:
        key = normalize_answer(a)
        if not key:
            continue
        spelling.setdefault(key, a.strip())
        counts[key] += 1
    if not counts:
        return "", {}
    order = list(spelling)  # first-seen order, for the deterministic tie-break
    best = max(order, key=lambda k: (counts[k], -order.index(k)))
    return spelling[best], {spelling[k]: counts[k] for k in order}


def vote_is_settled(votes: dict[str, int], remaining: int) -> bool:
    """True when ``remaining`` more samples cannot change the winner (adaptive self-consistency).

    >>> vote_is_settled({"a": 3, "b": 1}, 1)
    True
    >>> vote_is_settled({"a": 2, "b": 1}, 1)
    False
    """
    ranked = sorted(votes.values(), reverse=True) + [0, 0]
    return ranked[0] > ranked[1] + remaining


def _sampling(gen: GenerationConfig, k: int, *, sample: bool | None = None) -> dict:
    """Generation arguments for ``k`` completions: sampled at the config's temperature and top-p when
    ``sample`` (by default when k > 1), else one greedy completion."""
    sample = k > 1 if sample is None else sample
    return dict(n=k, temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed) if sample else dict(n=1)


def _answer_from_reasoning(text: str) -> tuple[str, str]:
    rationale, answer = prompts.split_rationale(text)
    if answer is None:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        answer = prompts.parse_answer(lines[-1]) if lines else ""
    return rationale, answer


def _finish(q: Question, rationales: list[str], answers: list[str]) -> MethodResult:
    answer, votes = majority_vote(answers)
    return MethodResult(id=q.id, answer=answer, votes=votes, rationales=rationales, answers=answers)


def standard(questions: Sequence[Question], large: Generator, gen: GenerationConfig, k: int = 1) -> list[MethodResult]:
    """The large LM answers directly; with k > 1 it samples k answers and votes."""
    outs = large.generate(
        [ROLES["standard"].build(q.question, q.context) for q in questions],
        max_new_tokens=ROLES["standard"].reserve(gen), **_sampling(gen, k),
    )
    results = []
    for q, g in zip(questions, outs):
        r = _finish(q, [], [prompts.parse_answer(t) for t in g.texts])
        r.usage["large"].add(g)
        results.append(r)
    return results


def cot(questions: Sequence[Question], large: Generator, gen: GenerationConfig, k: int = 1) -> list[MethodResult]:
    """The large LM reasons and answers in one completion; k > 1 samples k paths and votes."""
    outs = large.generate(
        [ROLES["cot"].build(q.question, q.context) for q in questions],
        max_new_tokens=ROLES["cot"].reserve(gen), **_sampling(gen, k),
    )
    results = []
    for q, g in zip(questions, outs):
        pairs = [_answer_from_reasoning(t) for t in g.texts]
        r = _finish(q, [p[0] for p in pairs], [p[1] for p in pairs])
        r.usage["large"].add(g)
        results.append(r)
    return results


def lm_guided(
    questions: Sequence[Question], small: Generator, large: Generator, gen: GenerationConfig, k: int = 1
) -> list[MethodResult]:
    """The small LM writes k rationales per question; the large LM answers each greedily; vote.

    With ``generation.sc_include_greedy`` (and k > 1) the first rationale is the greedy one and
    k - 1 are sampled."""
    prompts_ = [ROLES["small"].build(q.question, q.context) for q in questions]
    budget = ROLES["small"].reserve(gen)
    greedy = gen.sc_include_greedy and k > 1
    rationale_gens = small.generate(prompts_, max_new_tokens=budget,
                                    **_sampling(gen, k - 1 if greedy else k, sample=k > 1))
    if greedy:
        first = small.generate(prompts_, max_new_tokens=budget)
        rationale_gens = [merge_generations(a, b) for a, b in zip(first, rationale_gens)]
    rationales = [list(g.texts) for g in rationale_gens]
    return answer_rationales(questions, rationales, large, gen, rationale_gens)


def merge_generations(first: Generation, rest: Generation) -> Generation:
    """One prompt's completions from two calls, ``first``'s first; the prompt is counted once (one
    prefill, as the usage of ``n`` samples counts it) and both calls' completion tokens."""
    return dataclasses.replace(first, texts=tuple(first.texts) + tuple(rest.texts),
                               completion_tokens=first.completion_tokens + rest.completion_tokens)


def answer_rationales(questions, rationales, large: Generator, gen: GenerationConfig, rationale_gens=None):
    """The large LM answers each (question, rationale) pair greedily, in one batched call; vote."""
    flat = [
        ROLES["answer"].build(q.question, q.context, r)
        for q, rs in zip(questions, rationales)
        for r in rs
    ]
    answer_gens = iter(large.generate(flat, max_new_tokens=ROLES["answer"].reserve(gen)))
    results = []
    for i, (q, rs) in enumerate(zip(questions, rationales)):
        gens = [next(answer_gens) for _ in rs]
        r = _finish(q, rs, [prompts.parse_answer(g.texts[0]) for g in gens])
        if rationale_gens is not None:
            r.usage["small"].add(rationale_gens[i])
        for g in gens:
            r.usage["large"].add(g)
        results.append(r)
    return results


def gold_rationale(questions: Sequence[Question], large: Generator, gen: GenerationConfig) -> list[MethodResult]:
    """The large LM answers from the gold supporting facts as the rationale: an upper bound on what
    any small LM's rationale can give this large LM (an oracle: it reads the labels)."""
    missing = [q.id for q in questions if not q.evidence]
    if missing:
        raise ValueError(f"method gold_rationale needs supporting facts, which {len(missing)} question(s) lack "
                         f"(e.g. {missing[0]!r}); evaluate it on a labelled dev split")
    return answer_rationales(questions, [[q.evidence] for q in questions], large, gen)


def empty_rationale(questions: Sequence[Question], large: Generator, gen: GenerationConfig) -> list[MethodResult]:
    """The large LM answers from an empty rationale in the same prompt: the floor a rationale must beat."""
    return answer_rationales(questions, [[""] for _ in questions], large, gen)


def run_method(method: str, questions, *, small: Generator | None, large: Generator, gen: GenerationConfig, k: int = 1):
    """Dispatch by name (``standard``, ``cot``, ``lm_guided``, ``gold_rationale``, ``empty_rationale``)."""
    if method == "standard":
        return standard(questions, large, gen, k)
    if method == "cot":
        return cot(questions, large, gen, k)
    if method == "lm_guided":
        if small is None:
            raise ValueError("method lm_guided needs a small LM (config key: small)")
        return lm_guided(questions, small, large, gen, k)
    if method in ("gold_rationale", "empty_rationale"):
        if k > 1:
            raise ValueError(f"method {method} has one fixed rationale: set eval.self_consistency to 1")
        return (gold_rationale if method == "gold_rationale" else empty_rationale)(questions, large, gen)
    raise ValueError(f"unknown method {method!r}: use standard, cot, lm_guided, gold_rationale or empty_rationale")
