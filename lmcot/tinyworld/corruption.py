"""How the tiny world's judge pairs go wrong: one corruption of a faithful rationale per judge aspect.

The large T5 learns each judge aspect as a yes/no question on pairs that differ only in this
corruption (wrong entity: factuality; unrelated sentences: relevance; reversed steps: logicality and
coherence; a contradiction: consistency; broken words: fluency; repeated words: naturalness and
readability), so P(yes) can separate a faithful rationale from the corrupted one.
"""

from __future__ import annotations

import random

from lmcot.evaluation.judge_probe import CORRUPTIONS, JUDGE_CORRUPTION  # noqa: F401 (the one table; pairs read it here)
from lmcot.prompting import prompts


def with_conclusion(rationale: str, answer: str) -> str:
    return f"{rationale} {prompts.ANSWER_CUE} {answer}.".strip()


class Corruptor:
    """Turns a faithful rationale into one that violates given judge aspects."""

    def __init__(self, world):
        kinds = {"person": world.people, "city": world.cities, "country": world.countries, "film": world.films,
                 "company": world.companies, "band": world.bands}
        self.kind_of = {e.name: k for k, es in kinds.items() for e in es}
        self.by_kind = {k: [e.name for e in es] for k, es in kinds.items()}
        self.sentences = [s for sents in world.paragraphs.values() for s in sents]

    def wrong_entity(self, rng, text: str, avoid: str = "") -> str:
        names = sorted((n for n in self.kind_of if n in text and n != avoid), key=len, reverse=True)
        if names:
            name = rng.choice(names[:4])
            other = rng.choice([n for n in self.by_kind[self.kind_of[name]] if n != name])
            return text.replace(name, other)
        words = text.split()
        years = [i for i, w in enumerate(words) if w.strip(".,)").isdigit()]
        if years:
            i = rng.choice(years)
            words[i] = words[i].replace(words[i].strip(".,)"), str(int(words[i].strip(".,)")) + rng.randint(1, 30)))
        return " ".join(words)

    def __call__(self, kind: str, rng: random.Random, rationale: str, answer: str, distractors: list[str],
                 conclude: bool = False, distinct: bool = False) -> str:
        """The corrupted rationale; with ``conclude`` it ends in the answer cue, as the faithful one
        it stands against does (else "has a conclusion" alone would tell the two apart).

        With ``distinct``, a corruption that left the rationale as it was (a one-step rationale has
        no order to shuffle) swaps the halves of its words instead, so a "no" never reads exactly
        like its "yes". The mixture's judge pairs were built without it, and stay so."""
        bad = self._corrupt(kind, rng, rationale, answer, distractors, conclude)
        bad = with_conclusion(bad, answer) if conclude and prompts.ANSWER_CUE not in bad else bad
        if distinct and bad == (with_conclusion(rationale, answer) if conclude else rationale):
            words = bad.split()
            bad = " ".join(words[len(words) // 2:] + words[:len(words) // 2])
        return bad

    def _corrupt(self, kind, rng, rationale, answer, distractors, conclude) -> str:
        sents = [s for s in rationale.replace(". ", ".\n").splitlines() if s.strip()]
        if kind == "wrong_entity":
            return self.wrong_entity(rng, rationale)
        if kind == "unrelated":
            pool = distractors or self.sentences
            return " ".join(rng.sample(pool, min(len(pool), max(1, len(sents) - 1))))
        if kind == "shuffled":
            steps = sents + ([f"{prompts.ANSWER_CUE} {answer}."] if conclude else [])
            return " ".join(reversed(steps))
        if kind == "contradiction":
            if conclude and rng.random() < 0.5:
                return with_conclusion(rationale, self.wrong_entity(rng, answer) if answer not in ("yes", "no")
                                       else {"yes": "no", "no": "yes"}[answer])
            s = rng.choice(sents)
            return f"{rationale} {self.wrong_entity(rng, s)}"
        words = rationale.split()
        if kind == "broken":
            out = []
            for w in words:
                r = rng.random()
                if r < 0.25:
                    continue
                out.append(w[: max(1, len(w) // 2)] if r < 0.45 else w)
            rng.shuffle(out) if rng.random() < 0.3 else None
            return " ".join(out)
        if kind == "repeated":
            if rng.random() < 0.5:
                return " ".join(rationale.split()[:6] * 3) + " " + rationale
            return " ".join(w for w in words for _ in range(3 if rng.random() < 0.35 else 1))
        raise ValueError(kind)
