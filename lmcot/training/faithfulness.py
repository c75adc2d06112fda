"""Is a rationale faithful to its context? Every name and number it states must occur there.

Why: a rationale can reach the right answer by luck. On the tiny world, 46% of the teacher
rationales the answer filter kept named someone or something absent from the context (a comparison
question is a coin flip, so a wrong name still wins half of them), and distilling those teaches the
small LM to invent names. Entity overlap with the source is the usual cheap faithfulness check for
generated text (e.g. the entity-level precision of Nan et al. 2021, "Entity-level factual consistency
of abstractive text summarization"): here a *name* is a capitalised word that is not a sentence's
function word, and a *number* any run of digits; both must appear in the context as whole words.
"""

from __future__ import annotations

import re

FUNCTION_WORDS = frozenset(
    "A An And As At But By For From He Her His How If In Is It Its Of On Or She So That The Their Then There "
    "These They This To Was Were What When Where Which Who Whose Why With Yes No Both Neither Not".split())
"""Capitalised words that open sentences without naming anything."""

_WORD = re.compile(r"[A-Za-z][\w'-]*|\d+")


def _words(text: str) -> set[str]:
    return {w.removesuffix("'s") for w in _WORD.findall(text)}


def names(text: str) -> list[str]:
    """The names and numbers ``text`` states, each once, in order of appearance.

    >>> names("Ann Lee was born in 1951. She lived in Paris, as Ann's son did.")
    ['Ann', 'Lee', '1951', 'Paris']
    """
    out = []
    for w in _WORD.findall(text):
        w = w.removesuffix("'s")
        if (w[0].isdigit() or (w[0].isupper() and w not in FUNCTION_WORDS)) and w not in out:
            out.append(w)
    return out


def unsupported(rationale: str, context: str) -> list[str]:
    """Names and numbers of ``rationale`` that ``context`` never states, in order of appearance.

    >>> unsupported("Ann Lee was born in 1951 in Paris.", "Ann Lee (born 1951) lived in Paris.")
    []
    >>> unsupported("The film was directed by Bo Ray in 1960.", "The film was directed by Al Ray in 1961.")
    ['Bo', '1960']
    """
    known = _words(context)
    return [w for w in names(rationale) if w not in known]


def name_recall(rationale: str, evidence: str) -> float:
    """Share of the evidence's names and numbers that the rationale states (1.0 when the evidence has none):
    how much of what the answer rests on a rationale grounds, where :func:`unsupported` says what it invents.

    >>> name_recall("Ann Lee was born in Paris.", "Ann Lee was born in Paris in 1951.")
    0.75
    """
    wanted, stated = names(evidence), _words(rationale)
    return sum(w in stated for w in wanted) / len(wanted) if wanted else 1.0


def is_faithful(rationale: str, context: str) -> bool:
    """Every name and number of the rationale occurs in the context (an empty rationale is not faithful).

    >>> is_faithful("Paris is in France.", "Paris: Paris is the capital of France."), is_faithful("", "x")
    (True, False)
    """
    return bool(rationale.strip()) and not unsupported(rationale, context)
