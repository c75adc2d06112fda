"""Does the judge tell the gold chain of thought from a broken copy? One corruption per aspect, and its figures.

The report's aspect table says how the large-LM judge rates each row's rationales. A row rated above
the gold chain of thought may write better rationales, or may have learned what the judge likes; this
module gives the table its yardstick. On the questions the gold-rationale row judged, each gold chain
of thought is judged again beside a copy corrupted to violate one aspect (:data:`CORRUPTIONS`: a name
of the rationale swapped for a context name it does not mention, factuality; sentences of context
paragraphs it does not use, relevance; its steps in reverse order, logicality and coherence; one of
its sentences repeated with a wrong name, consistency; words cut and dropped, fluency; words
repeated, naturalness and readability). The judge *separates* an aspect when gold - corrupted mean
P(yes), paired on the same question, has its 95% bootstrap interval above zero
(:func:`lmcot.evaluation.statistics.paired`); the AUC is the chance that a random gold rationale
scores above a random corrupted one (ties count half; 0.5 is chance).

The corruptions read only the rationale and its context (``Title: sentences`` lines, as
:func:`lmcot.datasets.context.build_context` renders them) and the names of
:func:`lmcot.training.faithfulness.names`, so they apply to any dataset. Each is seeded by the probe's
seed, its kind and the texts: a probe is the same every time. :data:`CORRUPTIONS` is the one table of
which corruption violates which aspect (the tiny world's judge training pairs use it too).

What it leaves out: a corruption that cannot apply (a rationale without names, a context naming
nothing else, a one-word rationale to reorder) skips that question for that aspect, and the record
counts what was judged. One corruption per aspect measures the judge against that corruption, not
against every way a rationale can be bad: an aspect that separates here can still be gamed otherwise.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Mapping, Sequence

import numpy as np

from lmcot.evaluation.statistics import HOLDS, paired
from lmcot.training.faithfulness import names

CORRUPTIONS = {  # corruption -> the judge aspects it violates
    "wrong_entity": ("factuality",), "unrelated": ("relevance",), "shuffled": ("logicality", "coherence"),
    "contradiction": ("consistency",), "broken": ("fluency", "naturalness", "readability"),
    "repeated": ("naturalness", "readability"),
}
JUDGE_CORRUPTION = {aspect: kind for kind, aspects in CORRUPTIONS.items() for aspect in aspects}
"""The corruption each aspect is judged against (the last one listed that violates it)."""
DESCRIPTIONS = {"wrong_entity": "a wrong name", "unrelated": "unrelated sentences", "shuffled": "reversed steps",
                "contradiction": "a contradiction", "broken": "broken words", "repeated": "repeated words"}
"""Each corruption in words, for the report."""

SEED = 0
"""The probe's seed: the same corruptions, and the same bootstrap, every time a gold row is judged."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    """``text`` split after each ``.``, ``!`` or ``?`` that a space follows.

    >>> sentences("Al was born in 1950. Bo was born in 1960.  So Al was born first.")
    ['Al was born in 1950.', 'Bo was born in 1960.', 'So Al was born first.']
    """
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def paragraphs(context: str) -> list[tuple[str, list[str]]]:
    """(title, sentences) of each ``Title: sentences`` line of a context (title "" for a line without one).

    >>> paragraphs("Paris: Paris is in France. It is large.\\nBerlin: Berlin is in Germany.")
    [('Paris', ['Paris is in France.', 'It is large.']), ('Berlin', ['Berlin is in Germany.'])]
    """
    out = []
    for line in context.splitlines():
        title, sep, body = line.partition(": ")
        title, body = (title.strip(), body) if sep else ("", line)
        if title or body.strip():
            out.append((title, sentences(body)))
    return out


def _left_words(text: str) -> dict[str, set[str]]:
    """name -> the words just before its occurrences in ``text`` (lower-cased)."""
    out: dict[str, set[str]] = {}
    words = re.findall(r"[A-Za-z][\w'-]*|\d+", text)
    for before, word in zip(words, words[1:]):
        out.setdefault(word.removesuffix("'s"), set()).add(before.lower())
    return out


def _swap_name(rng: random.Random, text: str, rationale: str, context: str) -> str | None:
    """``text`` with one of its names (every occurrence, whole words) replaced by a name of ``context`` that
    ``rationale`` never states, of the same kind (a word for a word, a number for a number) and, where
    the context has one, after the same word ("in Paris" -> "in Lyon"); None when no name can be swapped."""
    stated = set(names(rationale))
    others = [n for n in names(context) if n not in stated]
    left = _left_words(f"{rationale}\n{context}")
    options = []
    for name in names(text):
        same_kind = [c for c in others if c.isdigit() == name.isdigit()]
        alike = [c for c in same_kind if left.get(c, set()) & left.get(name, set())]
        if same_kind:
            options.append((not alike, name.isdigit(), name, alike or same_kind))
    if not options:
        return None
    best = min(options)[:2]  # a name with look-alike candidates first, then a word before a number
    _, _, name, pool = rng.choice([o for o in options if o[:2] == best])
    return re.sub(rf"\b{re.escape(name)}\b", rng.choice(pool), text)


def wrong_entity(rng: random.Random, rationale: str, context: str) -> str | None:
    """Factuality: one name of the rationale, wherever it occurs, swapped for a context name it never states.

    >>> wrong_entity(random.Random(0), "Al was born in Paris.", "Al: Al was born in Paris.\\nBo: Bo was born in Lyon.")
    'Al was born in Lyon.'
    """
    return _swap_name(rng, rationale, rationale, context)


def unrelated(rng: random.Random, rationale: str, context: str) -> str | None:
    """Relevance: as many sentences as the rationale has, drawn from context paragraphs it does not use
    (neither every name of the title stated, nor one of its sentences quoted).

    >>> unrelated(random.Random(0), "Al was born in Paris.", "Al: Al was born in Paris.\\nBo: Bo sang.")
    'Bo sang.'
    """
    stated = set(names(rationale))

    def used(title: str, sents: list[str]) -> bool:
        title_names = names(title)
        return bool(title_names) and all(n in stated for n in title_names) or any(s in rationale for s in sents)

    pool = [s for title, sents in paragraphs(context) if not used(title, sents) for s in sents]
    return " ".join(rng.sample(pool, min(len(pool), len(sentences(rationale)) or 1))) if pool else None


def reversed_steps(rng: random.Random, rationale: str, context: str) -> str | None:
    """Logicality and coherence: the sentences in reverse order; a one-sentence rationale's clauses (split
    after commas and semicolons) reversed, or else its two halves of words swapped.

    >>> reversed_steps(random.Random(0), "Al was born in 1950. Bo in 1960. So Al is older.", "")
    'So Al is older. Bo in 1960. Al was born in 1950.'
    >>> reversed_steps(random.Random(0), "Al is older, so Al came first.", "")
    'so Al came first. Al is older,'
    """
    for parts in (sentences(rationale), re.split(r"(?<=[,;])\s+", rationale.strip())):
        if len(parts) > 1:
            return " ".join(reversed(parts))
    words = rationale.split()
    return " ".join(words[len(words) // 2:] + words[: len(words) // 2]) if len(words) > 1 else None


def contradiction(rng: random.Random, rationale: str, context: str) -> str | None:
    """Consistency: the rationale, then one of its sentences again with a name swapped (:func:`wrong_entity`).

    >>> contradiction(random.Random(0), "Al was born in Paris.", "Al: Al was born in Paris.\\nBo: Bo was born in Lyon.")
    'Al was born in Paris. Al was born in Lyon.'
    """
    steps = sentences(rationale)
    for step in rng.sample(steps, len(steps)):
        wrong = _swap_name(rng, step, rationale, context)
        if wrong is not None:
            return f"{rationale.strip()} {wrong}"
    return None


def broken(rng: random.Random, rationale: str, context: str) -> str | None:
    """Fluency: about a fifth of the words dropped and a quarter cut to their first half (at least one cut).

    >>> broken(random.Random(0), "Al was born in Paris in 1950.", "")
    'Al was bo i Paris i 1950.'
    """
    words = rationale.split()
    if not words:
        return None
    out = []
    for w in words:
        r = rng.random()
        if r >= 0.2:
            out.append(w[: max(1, len(w) // 2)] if r < 0.45 else w)
    if out == words or not out:
        longest = max(range(len(words)), key=lambda i: len(words[i]))
        out = words[:longest] + [words[longest][: max(1, len(words[longest]) // 2)]] + words[longest + 1:]
    return " ".join(out)


def repeated(rng: random.Random, rationale: str, context: str) -> str | None:
    """Naturalness and readability: about a third of the words said three times (at least the first).

    >>> repeated(random.Random(1), "Al was born in Paris.", "")
    'Al Al Al was born in in in Paris.'
    """
    words = rationale.split()
    if not words:
        return None
    out = [w for w in words for _ in range(3 if rng.random() < 0.3 else 1)]
    return " ".join(out if len(out) > len(words) else [words[0]] * 2 + out)


CORRUPT: dict[str, Callable[[random.Random, str, str], str | None]] = {
    "wrong_entity": wrong_entity, "unrelated": unrelated, "shuffled": reversed_steps,
    "contradiction": contradiction, "broken": broken, "repeated": repeated,
}
"""Each corruption of :data:`CORRUPTIONS` by name: ``(rng, rationale, context) -> corrupted or None``."""


def corrupt(kind: str, rationale: str, context: str, seed: int = SEED) -> str | None:
    """``rationale`` corrupted by ``kind`` (a key of :data:`CORRUPTIONS`), the same for the same inputs;
    None where the corruption cannot apply or would leave the text as it was.

    >>> corrupt("shuffled", "Al is older. So Al came first.", "")
    'So Al came first. Al is older.'
    >>> corrupt("wrong_entity", "Al is older.", "Al: Al is 40.") is None  # the context names no one else
    True
    """
    if kind not in CORRUPT:
        raise ValueError(f"unknown corruption {kind!r}; valid: {', '.join(CORRUPT)}")
    out = CORRUPT[kind](random.Random(f"{seed}\n{kind}\n{rationale}\n{context}"), rationale, context)
    return None if out is None or out.split() == rationale.split() else out


def auc(gold: Sequence[float], corrupted: Sequence[float]) -> float:
    """The chance that a random gold score is above a random corrupted one, ties counting half.

    >>> auc([0.9, 0.8], [0.1, 0.2]), auc([0.5, 0.5], [0.5]), auc([0.1], [0.9, 0.1])
    (1.0, 0.5, 0.25)
    """
    g, c = np.asarray(gold, dtype=float)[:, None], np.asarray(corrupted, dtype=float)[None, :]
    return float(((g > c) + 0.5 * (g == c)).mean())


def separation(gold: Sequence[float], corrupted: Sequence[float], *, seed: int = SEED) -> dict:
    """How far the judge's scores of gold rationales lie above those of their corrupted copies (the two
    lists aligned by question): both means, gold - corrupted paired with its 95% interval, the AUC,
    and ``separates``: the interval is above zero.

    >>> s = separation([0.9, 0.8, 0.7, 0.9], [0.2, 0.3, 0.1, 0.4])
    >>> s["separates"], s["auc"], round(s["delta"], 3), s["low"] > 0
    (True, 1.0, 0.575, True)
    >>> separation([0.5, 0.6], [0.6, 0.5])["separates"]
    False
    """
    if len(gold) != len(corrupted):
        raise ValueError(f"{len(gold)} gold scores against {len(corrupted)} corrupted ones: pair them by question")
    p = paired({str(i): x for i, x in enumerate(corrupted)}, {str(i): x for i, x in enumerate(gold)}, seed=seed)
    return {"n": p.n, "gold": float(np.mean(gold)), "corrupted": float(np.mean(corrupted)), "delta": p.delta,
            "low": p.low, "high": p.high, "auc": auc(gold, corrupted), "verdict": p.verdict,
            "separates": p.verdict == HOLDS}


Scorer = Callable[[str, Sequence[str], Sequence[str], Sequence[str]], list[float]]
"""``(aspect, questions, contexts, rationales) -> P(yes)`` of each rationale on that aspect: the judge."""


def probe(questions: Sequence[str], contexts: Sequence[str], rationales: Sequence[str],
          gold_scores: Mapping[str, Sequence[float]], score: Scorer, *, seed: int = SEED) -> dict:
    """Judge each gold rationale's copy corrupted against each aspect of ``gold_scores`` (the judge's
    scores of the gold rationales themselves, aspect -> one per rationale: what judging the row gave)
    with one ``score`` call per aspect; returns ``{"seed", "questions", "aspects": {aspect: record}}``,
    each record :func:`separation`'s figures plus the corruption's name, how many questions it
    skipped, the per-question scores and one example pair.

    >>> fake = lambda aspect, qs, cs, rs: [0.9 if "Paris" in r else 0.1 for r in rs]
    >>> rationales, context = ["Al was born in Paris."], ["Al: Al was born in Paris.\\nBo: Bo was born in Lyon."]
    >>> rec = probe(["Where?"], context, rationales, {"factuality": [0.9]}, fake)
    >>> f = rec["aspects"]["factuality"]
    >>> f["corruption"], f["n"], f["skipped"], f["auc"], f["example"]["corrupted"]
    ('wrong_entity', 1, 0, 1.0, 'Al was born in Lyon.')
    """
    record: dict = {"seed": seed, "questions": len(rationales), "aspects": {}}
    for aspect, scores in gold_scores.items():
        kind = JUDGE_CORRUPTION[aspect]
        bad = [corrupt(kind, r, c, seed) for r, c in zip(rationales, contexts)]
        keep = [i for i, b in enumerate(bad) if b is not None]
        out: dict = {"corruption": kind, "n": 0, "skipped": len(rationales) - len(keep)}
        if keep:
            gold = [scores[i] for i in keep]
            corrupted = list(score(aspect, [questions[i] for i in keep], [contexts[i] for i in keep],
                                   [bad[i] for i in keep]))
            out.update(separation(gold, corrupted, seed=seed), gold_scores=gold, corrupted_scores=corrupted,
                       example={"gold": rationales[keep[0]], "corrupted": bad[keep[0]]})
        record["aspects"][aspect] = out
    return record
