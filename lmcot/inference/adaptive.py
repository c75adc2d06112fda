"""Adaptive self-consistency: sample in rounds, stop a question once more samples cannot change its vote.

With ``k`` samples in rounds of ``round_size`` (:func:`round_sizes`), each round runs the method
(:func:`lmcot.inference.method.run_method`) on the questions still open, with that round's number
of samples, and merges the answers into the question's result (:func:`merge_results`: one vote
over every answer so far). A question is closed once its leader is ahead by more than the samples
left (:func:`~lmcot.inference.method.vote_is_settled`), so an easy question costs one round and a
contested one all ``k``; the answer is the one all ``k`` samples would give whenever the vote was
settled. Pure over :class:`~lmcot.models.generation.Generator` objects: ``lmcot eval --adaptive``
and the Serve ingress (one question per request) run the same loop.

Each round after the first draws fresh samples: its seed is ``generation.seed`` plus the round's
index (a seeded generator would otherwise repeat the first round's samples), and the greedy
rationale of ``generation.sc_include_greedy`` is drawn in the first round only. Left out: stopping
on a confidence threshold short of certainty (the answer could then differ from the full vote's).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from lmcot.config import GenerationConfig
from lmcot.inference.method import MethodResult, Question, majority_vote, run_method, vote_is_settled
from lmcot.models.generation import Generator


def round_sizes(k: int, adaptive: bool, round_size: int) -> list[int]:
    """Samples per round: all k at once, or rounds of ``round_size`` (a last round of one joins the one before).

    >>> round_sizes(5, False, 2), round_sizes(5, True, 2), round_sizes(6, True, 2), round_sizes(3, True, 2)
    ([5], [2, 3], [2, 2, 2], [3])
    """
    if not adaptive or k <= round_size:
        return [k]
    sizes = [round_size] * (k // round_size) + ([k % round_size] if k % round_size else [])
    if sizes[-1] == 1:
        sizes[-2:] = [sizes[-2] + 1]
    return sizes


def merge_results(a: MethodResult, b: MethodResult) -> MethodResult:
    """Two rounds of one question as one result, re-voted over all answers."""
    answers = a.answers + b.answers
    answer, votes = majority_vote(answers)
    usage = {role: dataclasses.replace(u).add(b.usage[role]) for role, u in a.usage.items()}
    return MethodResult(a.id, answer, votes, a.rationales + b.rationales, answers, usage)


def round_generation(gen: GenerationConfig, index: int) -> GenerationConfig:
    """The generation settings of round ``index``: the first round's as given, later rounds fresh samples.

    >>> later = round_generation(GenerationConfig(seed=7, sc_include_greedy=True), 2)
    >>> later.seed, later.sc_include_greedy
    (9, False)
    """
    if index == 0:
        return gen
    return dataclasses.replace(gen, seed=gen.seed + index, sc_include_greedy=False)


def run_adaptive(method: str, questions: Sequence[Question], *, small: Generator | None, large: Generator,
                 gen: GenerationConfig, k: int, round_size: int, adaptive: bool = True) -> list[MethodResult]:
    """``method`` with up to ``k`` samples per question in rounds, each question stopping once its vote is
    settled; one result per question, in order (with ``adaptive`` off: ``run_method`` with all k at once)."""
    sizes = round_sizes(k, adaptive, round_size)
    results: list[MethodResult | None] = [None] * len(questions)
    open_ = list(range(len(questions)))
    for i, size in enumerate(sizes):
        batch = run_method(method, [questions[j] for j in open_], small=small, large=large,
                           gen=round_generation(gen, i), k=size)
        for j, r in zip(open_, batch):
            results[j] = r if results[j] is None else merge_results(results[j], r)
        remaining = sum(sizes[i + 1:])
        open_ = [j for j in open_ if not vote_is_settled(results[j].votes, remaining)]
        if not remaining or not open_:
            break
    return results
