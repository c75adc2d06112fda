"""Rewards for rationale refinement, as pure functions the RL loops call by name.

Each reward follows the TRL convention ``reward(prompts, completions, **columns) ->
list[float]``: one float per completion, the dataset columns (``question``,
``context``, ``answer``) as lists aligned with the completions. They are collected
in one explicit dict, :data:`REWARDS`, so configs and the weight search name them.

- ``task``: the large LM answers from (question, context, rationale); F1 or EM of
  that answer against the gold answer (the paper's task-oriented reward).
- one reward per aspect of :data:`lmcot.prompting.prompts.ASPECTS` (factuality ... readability):
  the large LM's P("yes") to that aspect's question, from next-token logits, no
  generation (the paper's rationale-oriented rewards).
- ``quality``: the mean of the judged aspects (the aggregated rationale score).
- ``degenerate``: a penalty in [-1, 0] for empty rationales, heavily repeated text
  and rationales that are only the answer: RL finds those shortcuts quickly.

The large LM is reached through ``judge=`` (a :class:`RewardJudge` around any
:class:`~lmcot.models.generation.Generator`: a local model, a Ray actor pool, an API). It
memoises the last batch, so the eight aspect rewards of one batch cost ONE batched
``score_yes_no`` call over all (aspect, completion) pairs, and the task reward one
batched ``generate`` call, however many functions ask.
"""

from __future__ import annotations

import difflib
import functools
import time
from typing import Callable, Mapping, Sequence

from lmcot.scoring.metrics import answer_metrics, normalize_answer
from lmcot.prompting.prompts import ASPECTS, parse_answer, split_rationale
from lmcot.prompting.roles import ROLES

RewardFn = Callable[..., list[float]]


class RewardJudge:
    """The large LM as the rewards use it: answers from rationales and aspect P(yes), per batch.

    ``generator`` is any :class:`~lmcot.models.generation.Generator`. ``aspects`` are the aspects
    scored together whenever any aspect is asked for. ``calls`` counts large-LM calls and
    ``seconds`` the time spent in them (the RL loops log its share of the step time).
    """

    def __init__(self, generator, *, aspects: Sequence[str] = tuple(ASPECTS), answer_max_new_tokens: int = 16):
        unknown = [a for a in aspects if a not in ASPECTS]
        if unknown:
            raise ValueError(f"unknown aspects {unknown}; valid: {', '.join(ASPECTS)}")
        self.generator = generator
        self.aspects = tuple(aspects) or tuple(ASPECTS)
        self.answer_max_new_tokens = answer_max_new_tokens
        self.calls = 0
        self.seconds = 0.0
        self._answers: tuple[tuple, list[str]] | None = None
        self._scores: tuple[tuple, dict[str, list[float]]] | None = None

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - start

    def answers(self, questions: Sequence[str], contexts: Sequence[str], rationales: Sequence[str]) -> list[str]:
        """The large LM's greedy answer from each (question, context, rationale): one batched call."""
        key = (tuple(questions), tuple(contexts), tuple(rationales))
        if self._answers is None or self._answers[0] != key:
            texts = [ROLES["answer"].build(q, c, r) for q, c, r in zip(*key)]
            gens = self._timed(self.generator.generate, texts, max_new_tokens=self.answer_max_new_tokens)
            self._answers = (key, [parse_answer(g.texts[0]) for g in gens])
        return self._answers[1]

    def aspect_scores(self, questions: Sequence[str], contexts: Sequence[str],
                      rationales: Sequence[str]) -> dict[str, list[float]]:
        """P(yes) of every aspect for every rationale: one batched ``score_yes_no`` call for all."""
        key = (tuple(questions), tuple(contexts), tuple(rationales))
        if self._scores is None or self._scores[0] != key:
            texts = [ROLES["judge"].build(q, c, r, aspect=a) for a in self.aspects for q, c, r in zip(*key)]
            flat = self._timed(self.generator.score_yes_no, texts)  # one token: the judge role's reserve
            n = len(rationales)
            self._scores = (key, {a: list(flat[i * n : (i + 1) * n]) for i, a in enumerate(self.aspects)})
        return self._scores[1]


def _golds(answer) -> list[str]:
    return [answer] if isinstance(answer, str) else list(answer)


def task(prompts, completions, *, judge: RewardJudge, question, context, answer, task_metric: str = "f1",
         **_) -> list[float]:
    """F1 (or EM) of the large LM's answer from each rationale against the gold answer(s).

    >>> from lmcot.config import ModelSpec
    >>> from lmcot.models.generation import HFGenerator
    >>> judge = RewardJudge(HFGenerator(ModelSpec("tiny:t5-large")))
    >>> r = task(["p"], ["Paris is in France."], judge=judge, question=["Capital?"], context=["..."],
    ...          answer=["Paris"])
    >>> len(r), 0.0 <= r[0] <= 1.0
    (1, True)
    """
    if task_metric not in ("f1", "em"):
        raise ValueError(f"task_metric={task_metric!r} is not one of f1, em")
    predictions = judge.answers(question, context, completions)
    return [answer_metrics(p, _golds(g))[task_metric] for p, g in zip(predictions, answer)]


def _aspect_reward(name: str) -> RewardFn:
    def reward(prompts, completions, *, judge: RewardJudge, question, context, **_) -> list[float]:
        if name not in judge.aspects:
            raise ValueError(f"reward {name!r} needs the judge to score it: build RewardJudge(aspects=...) with it")
        return judge.aspect_scores(question, context, completions)[name]

    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = f"""The large LM's P("yes") that the rationale is {name} ({ASPECTS[name].question!r}).

    All aspects of all completions are scored in one batched call and memoised, so the
    other aspect rewards of the same batch are free.

    >>> from lmcot.config import ModelSpec
    >>> from lmcot.models.generation import HFGenerator
    >>> judge = RewardJudge(HFGenerator(ModelSpec("tiny:t5-large")))
    >>> r = {name}(["p"], ["A was born in 1901."], judge=judge, question=["Who?"], context=["A: 1901."])
    >>> len(r), 0.0 <= r[0] <= 1.0, judge.calls
    (1, True, 1)
    """
    return reward


factuality = _aspect_reward("factuality")
relevance = _aspect_reward("relevance")
logicality = _aspect_reward("logicality")
consistency = _aspect_reward("consistency")
coherence = _aspect_reward("coherence")
fluency = _aspect_reward("fluency")
naturalness = _aspect_reward("naturalness")
readability = _aspect_reward("readability")


def quality(prompts, completions, *, judge: RewardJudge, question, context, **_) -> list[float]:
    """Mean P("yes") over the judge's aspects: one aggregated rationale-quality score.

    >>> from lmcot.config import ModelSpec
    >>> from lmcot.models.generation import HFGenerator
    >>> judge = RewardJudge(HFGenerator(ModelSpec("tiny:t5-large")), aspects=["fluency", "coherence"])
    >>> q = quality(["p"], ["A was born in 1901."], judge=judge, question=["Who?"], context=["A: 1901."])
    >>> s = judge.aspect_scores(["Who?"], ["A: 1901."], ["A was born in 1901."])
    >>> round(q[0], 6) == round((s["fluency"][0] + s["coherence"][0]) / 2, 6), judge.calls
    (True, 1)
    """
    scores = judge.aspect_scores(question, context, completions)
    return [sum(scores[a][i] for a in judge.aspects) / len(judge.aspects) for i in range(len(completions))]


def repeated_ngram_fraction(text: str, n: int = 3) -> float:
    """Share of the word n-grams of ``text`` that repeat an earlier one (0: no repetition).

    >>> repeated_ngram_fraction("a b c a b c a b c")
    0.5714285714285714
    >>> repeated_ngram_fraction("one two three four")
    0.0
    """
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def degenerate(prompts, completions, *, answer=None, max_repeat: float = 0.3, **_) -> list[float]:
    """Penalty: -1 for an empty rationale or one that is only the answer; minus the excess of
    repeated 3-grams over ``max_repeat`` (scaled to reach -1 when everything repeats); else 0.

    >>> degenerate(["p"] * 4, ["", "Paris.", "So the answer is: Paris.", "A is in B. B is in C. So A is in C."],
    ...            answer=["Paris"] * 4)
    [-1.0, -1.0, -1.0, 0.0]
    >>> degenerate(["p"], ["the cat the cat the cat the cat the cat the cat"])
    [-0.7142857142857143]
    """
    golds = answer if answer is not None else [None] * len(completions)
    out = []
    for text, gold in zip(completions, golds):
        rationale, _stated = split_rationale(text)
        norm = normalize_answer(rationale)
        gold_norms = {normalize_answer(g) for g in _golds(gold)} if gold is not None else set()
        if not norm or norm in gold_norms:
            out.append(-1.0)
            continue
        excess = repeated_ngram_fraction(text) - max_repeat
        out.append(-excess / (1.0 - max_repeat) if excess > 0 else 0.0)
    return out


REWARDS: dict[str, RewardFn] = {
    "task": task,
    **{name: globals()[name] for name in ASPECTS},
    "quality": quality,
    "degenerate": degenerate,
}
"""Every reward by the name configs use (``refine.reward_weights``)."""

JUDGED = ("task", *ASPECTS, "quality")
"""Rewards that call the large LM."""


def check_reward_weights(weights: Mapping[str, float], aspect_mode: str = "weighted",
                         quality_aspects: Sequence[str] = ()) -> None:
    """Fail with a message naming the field and the fix when the weights cannot be used.

    >>> check_reward_weights({"task": 1.0, "factuality": 0.1})
    >>> check_reward_weights({"task": 1.0, "factualty": 0.1})
    Traceback (most recent call last):
    ...
    ValueError: reward_weights names unknown reward 'factualty' (did you mean 'factuality'?); valid: ...
    >>> check_reward_weights({"task": 0.0})
    Traceback (most recent call last):
    ...
    ValueError: reward_weights are all zero: give at least one reward a non-zero weight, e.g. {task: 1.0}
    """
    for name in weights:
        if name not in REWARDS:
            match = difflib.get_close_matches(name, list(REWARDS), n=1, cutoff=0.5)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            raise ValueError(f"reward_weights names unknown reward {name!r}{hint}; valid: {', '.join(REWARDS)}")
    if not any(w != 0 for w in weights.values()):
        raise ValueError("reward_weights are all zero: give at least one reward a non-zero weight, e.g. {task: 1.0}")
    for a in quality_aspects:
        if a not in ASPECTS:
            raise ValueError(f"quality_aspects names unknown aspect {a!r}; valid: {', '.join(ASPECTS)}")
    named_aspects = [n for n in weights if n in ASPECTS]
    if aspect_mode == "mean" and named_aspects:
        raise ValueError(
            f"aspect_mode=mean averages the aspects into 'quality': replace reward_weights {named_aspects} with "
            "one weight reward_weights.quality (and list the aspects in quality_aspects), or use aspect_mode=weighted"
        )
    if aspect_mode == "weighted" and "quality" in weights:
        raise ValueError("reward_weights.quality is the aggregated score of aspect_mode=mean: set aspect_mode=mean "
                         "or weight the aspects one by one")
    if aspect_mode not in ("weighted", "mean"):
        raise ValueError(f"aspect_mode={aspect_mode!r} is not one of weighted, mean")


def reward_plan(weights: Mapping[str, float], aspect_mode: str = "weighted",
                quality_aspects: Sequence[str] = ()) -> tuple[dict[str, float], tuple[str, ...]]:
    """(reward name -> weight for every component to compute and log, aspects the judge scores).

    Components with weight 0 are left out, except that in ``mean`` mode each averaged aspect
    is logged with weight 0: it comes free with the batched judge call.

    >>> reward_plan({"task": 1.0, "quality": 0.5, "degenerate": 0.0}, "mean", ["fluency", "coherence"])
    ({'task': 1.0, 'quality': 0.5, 'fluency': 0.0, 'coherence': 0.0}, ('fluency', 'coherence'))
    >>> reward_plan({"task": 1.0, "relevance": 0.1})
    ({'task': 1.0, 'relevance': 0.1}, ('relevance',))
    """
    check_reward_weights(weights, aspect_mode, quality_aspects)
    plan = {name: float(w) for name, w in weights.items() if w != 0}
    if aspect_mode == "mean" and "quality" in plan:
        aspects = tuple(quality_aspects) or tuple(ASPECTS)
        plan.update({a: 0.0 for a in aspects})
    else:
        aspects = tuple(n for n in plan if n in ASPECTS)
    return plan, aspects


def compute_rewards(plan: Mapping[str, float], prompts: Sequence[str], completions: Sequence[str],
                    **columns) -> dict[str, list[float]]:
    """Every planned component for a batch (the judge is passed in ``columns``)."""
    return {name: [float(x) for x in REWARDS[name](prompts, completions, **columns)] for name in plan}


def bind_rewards(plan: Mapping[str, float], **fixed) -> list[RewardFn]:
    """The planned rewards as TRL ``reward_funcs`` with ``judge=`` and other fixed arguments bound.

    ``functools.partial`` keeps each function's name, which TRL logs as ``rewards/<name>/mean``.

    >>> [f.func.__name__ for f in bind_rewards({"task": 1.0, "degenerate": 0.5}, task_metric="em")]
    ['task', 'degenerate']
    """
    return [functools.partial(REWARDS[name], **fixed) for name in plan]


def score_batch(prompts: Sequence[str], completions: Sequence[str], *, plan: Mapping[str, float],
                aspect_mode: str = "weighted", **columns) -> tuple[list[float], dict[str, list[float]]]:
    """(total reward, every component) of a batch: what the lmcot RL loop needs per step.

    >>> total, parts = score_batch(["p", "p"], ["", "A is B. B is C."], plan={"degenerate": 2.0})
    >>> total, parts
    ([-2.0, 0.0], {'degenerate': [-1.0, 0.0]})
    """
    components = compute_rewards(plan, prompts, completions, **columns)
    return combine(components, plan, aspect_mode), components


def combine(components: Mapping[str, Sequence[float]], weights: Mapping[str, float],
            aspect_mode: str = "weighted") -> list[float]:
    """Total reward per completion: the weighted sum of the named components.

    ``aspect_mode="mean"`` derives ``quality`` (the mean of the aspect components present)
    when it was not computed, and weights it against the other rewards.

    >>> combine({"task": [1.0, 0.0], "fluency": [0.5, 1.0]}, {"task": 1.0, "fluency": 0.2})
    [1.1, 0.2]
    >>> combine({"task": [1.0], "fluency": [0.4], "coherence": [0.8]}, {"task": 1.0, "quality": 0.5}, "mean")
    [1.3]
    """
    columns = weighted_columns(components, weights, aspect_mode)
    n = len(next(iter(components.values())))
    return [sum(w * values[i] for w, values in columns.values()) for i in range(n)]


def weighted_columns(components: Mapping[str, Sequence[float]], weights: Mapping[str, float],
                     aspect_mode: str = "weighted") -> dict[str, tuple[float, Sequence[float]]]:
    """name -> (weight, values) of every reward with a non-zero weight: what a total is made of.

    ``aspect_mode="mean"`` derives ``quality`` (the mean of the aspect components present) when it
    was not computed. The RL loop normalizes these columns one by one before weighting them when
    ``refine.reward_aggregation`` is ``normalize_then_sum``.

    >>> weighted_columns({"task": [1.0], "fluency": [0.4], "coherence": [0.8]}, {"task": 1.0, "quality": 0.5}, "mean")
    {'task': (1.0, [1.0]), 'quality': (0.5, [0.6000000000000001])}
    """
    components = dict(components)
    if aspect_mode == "mean" and "quality" in weights and "quality" not in components:
        present = [components[a] for a in ASPECTS if a in components]
        if not present:
            raise ValueError("aspect_mode=mean needs aspect components to average into 'quality'")
        components["quality"] = [sum(col) / len(present) for col in zip(*present)]
    missing = [n for n, w in weights.items() if w != 0 and n not in components]
    if missing:
        raise KeyError(f"no component for weighted rewards {missing}; computed: {sorted(components)}")
    return {name: (float(w), components[name]) for name, w in weights.items() if w != 0}
