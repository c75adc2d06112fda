"""The reasoning step a comparison question needs, written out, for the tiny world's rationales.

Why: a multi-hop rationale that only lists the supporting facts ("X was born in 1951. Y was born
in 1963.") leaves the comparison to the reader. The tiny large T5 cannot compare two years in its
head: with the facts alone every method, the gold-rationale oracle included, was near chance on
the binary questions (43 of the 80 shipped dev questions). A chain of thought states the step
("1951 is earlier than 1963, so X was born first"), as CoT demonstrations for HotpotQA do, so
the pretraining targets of CoT, teacher and answer-from-rationale carry it.

The step is derived from the world's entities (the generator's ground truth), matched by the
question templates of ``lmcot.tinyworld.synthetic``; a question of no comparison template has no
step (its answer is a span of the evidence already).
"""

from __future__ import annotations

import re

_NOT = {True: "", False: "not "}


def _year_step(verb: str, x, y, answer: str) -> str:
    first, last = sorted((x.year, y.year))
    return (f"{x.name} {verb} in {x.year} and {y.name} in {y.year}; {first} is earlier than {last}, "
            f"so {answer} {verb} first.")


def _people_step(x, y, answer: str, tail: str) -> str:
    first, last = sorted((x, y), key=lambda p: p.birth_key)
    return (f"{x.name} was born on {x.date} and {y.name} on {y.date}; {first.date} is earlier than "
            f"{last.date}, so {answer} {tail}.")


def _countries_step(x, y, answer: str, what: str) -> str:
    return f"{x.name} is from {x.country} and {y.name} is from {y.country}, so they are {_NOT[answer == 'yes']}{what}."


def comparison_step(world, question: str, answer: str) -> str:
    """The sentence that turns a comparison question's facts into its answer ("" for other questions).

    >>> from types import SimpleNamespace as E
    >>> a, b = E(name="Ann", year=1951), E(name="Bo", year=1963)
    >>> w = E(by_name={"Ann": a, "Bo": b})
    >>> comparison_step(w, "Which was founded first, Ann or Bo?", "Ann")
    'Ann was founded in 1951 and Bo in 1963; 1951 is earlier than 1963, so Ann was founded first.'
    >>> comparison_step(w, "Who directed Ann?", "Bo")
    ''
    """
    by = world.by_name
    m = re.fullmatch(r"Which was (founded|formed) first, (.+) or (.+)\?", question)
    if m:
        return _year_step(f"was {m[1]}", by[m[2]], by[m[3]], answer)
    m = re.fullmatch(r"Which film came out first, (.+) or (.+)\?", question)
    if m:
        return _year_step("came out", by[m[1]], by[m[2]], answer)
    m = re.fullmatch(r"Who was born first, (.+) or (.+)\?", question)
    if m:
        return _people_step(by[m[1]], by[m[2]], answer, "was born first")
    m = re.fullmatch(r"Which film has the director who was born (later|earlier), (.+) or (.+)\?", question)
    if m:
        dx, dy = by[by[m[2]].director], by[by[m[3]].director]
        first, last = sorted((dx, dy), key=lambda p: p.birth_key)
        return (f"{m[2]} was directed by {dx.name}, born on {dx.date}, and {m[3]} by {dy.name}, born on "
                f"{dy.date}; {first.date} is earlier than {last.date}, so {answer} has the director who was "
                f"born {m[1]}.")
    m = re.fullmatch(r"Are (.+) and (.+) both from (.+)\?", question)
    if m:
        return _countries_step(by[m[1]], by[m[2]], answer, f"both from {m[3]}")
    m = re.fullmatch(r"Are (.+) and (.+) both (.+) films\?", question)
    if m:
        x, y = by[m[1]], by[m[2]]
        return (f"{x.name} is a {x.genre} film and {y.name} is a {y.genre} film, so they are "
                f"{_NOT[answer == 'yes']}both {m[3]} films.")
    m = re.fullmatch(r"Are (.+) and (.+) of the same nationality\?", question)
    if m:
        return _countries_step(by[m[1]], by[m[2]], answer, "of the same nationality")
    return ""


def reasoned_rationale(world, example) -> str:
    """The example's supporting facts followed by its comparison step (if any): the tiny world's
    gold chain of thought."""
    step = comparison_step(world, example.question, example.answer)
    return f"{example.evidence} {step}".strip()
