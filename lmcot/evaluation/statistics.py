"""Paired statistics for comparing two methods on the same questions.

Why paired: two rows of the report answer the same questions, so their per-question scores are
correlated; the spread of a *difference* is far smaller than the spread of either row (on the tiny
world, about ±13 F1 for one row of 40 questions, while per-question differences have an SD of
~0.27). The interval of a mean difference is a percentile bootstrap over questions, resampling
the pairs together (Efron & Tibshirani 1993; the usual choice for EM/F1 in QA, e.g. Dror et al.
2018), with a fixed seed so a report is the same every time it is rebuilt.

A verdict follows the interval, never the point estimate: "holds" when the whole 95% interval is
above zero, "reversed" when it is below, otherwise "not distinguishable from noise".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

RESAMPLES = 10_000
"""Bootstrap resamples: the interval's ends move by well under 0.1 F1 between seeds at this count."""

HOLDS, REVERSED, NOISE = "holds", "reversed", "not distinguishable from noise"


def bootstrap_ci(values: Sequence[float], *, resamples: int = RESAMPLES, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its percentile bootstrap interval.

    >>> bootstrap_ci([1.0, 1.0, 1.0])
    (1.0, 1.0, 1.0)
    >>> m, lo, hi = bootstrap_ci([0.0, 1.0] * 200)
    >>> m, round(lo, 2) < 0.5 < round(hi, 2), hi - lo < 0.11
    (0.5, True, True)
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(x.mean()), float(lo), float(hi)


def verdict(low: float, high: float) -> str:
    """What an interval of a difference (B - A) says.

    >>> verdict(0.01, 0.05), verdict(-0.05, -0.01), verdict(-0.01, 0.03)
    ('holds', 'reversed', 'not distinguishable from noise')
    """
    return HOLDS if low > 0 else REVERSED if high < 0 else NOISE


@dataclass(frozen=True)
class Paired:
    """B - A on the questions both answered: mean difference, its interval, wins and losses of B."""

    n: int
    delta: float
    low: float
    high: float
    wins: int
    losses: int

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)

    def as_dict(self) -> dict:
        return {"n": self.n, "delta": self.delta, "low": self.low, "high": self.high, "wins": self.wins,
                "losses": self.losses, "verdict": self.verdict}


def paired(a: Mapping[str, float], b: Mapping[str, float], *, seed: int = 0) -> Paired:
    """Compare per-question scores ``b`` against ``a`` (keys: question ids), paired on common ids.

    >>> p = paired({"q1": 0.0, "q2": 1.0, "q3": 0.5}, {"q1": 1.0, "q2": 1.0, "q3": 0.5})
    >>> (p.n, round(p.delta, 3), p.wins, p.losses)
    (3, 0.333, 1, 0)
    >>> paired({"q1": 1.0}, {"q2": 1.0})
    Traceback (most recent call last):
    ...
    ValueError: the two score sets share no question id: compare evaluations of the same questions
    """
    ids = sorted(set(a) & set(b))
    if not ids:
        raise ValueError("the two score sets share no question id: compare evaluations of the same questions")
    diff = [b[i] - a[i] for i in ids]
    delta, low, high = bootstrap_ci(diff, seed=seed)
    return Paired(len(ids), delta, low, high, sum(d > 0 for d in diff), sum(d < 0 for d in diff))


_CHOICE = re.compile(r",\s*(.+?)\s+or\s+(.+?)\?\s*$")


def is_binary(question: str, answer: str) -> bool:
    """A question whose answer is one of two given options: yes/no, or "..., X or Y?" answered X or Y.

    Such questions are a coin flip for a model that cannot compare, so the report shows them apart.

    >>> is_binary("Are A and B both films?", "no"), is_binary("Who was born first, Al or Bo?", "Bo")
    (True, True)
    >>> is_binary("Where was Al born?", "Paris")
    False
    """
    if answer.strip().lower() in ("yes", "no"):
        return True
    m = _CHOICE.search(question)
    return bool(m) and answer.strip() in (m.group(1).strip(), m.group(2).strip())


def fmt_interval(mean: float, low: float, high: float, scale: float = 100.0) -> str:
    """``+4.2 [+1.0, +7.5]`` (signed, scaled to points).

    >>> fmt_interval(0.042, 0.01, 0.075)
    '+4.2 [+1.0, +7.5]'
    """
    return f"{scale * mean:+.1f} [{scale * low:+.1f}, {scale * high:+.1f}]"


def fmt_ci(mean: float, low: float, high: float, scale: float = 100.0) -> str:
    """``55.3 [50.8, 59.8]``: a level (not a difference) with its interval, in points.

    >>> fmt_ci(0.553, 0.508, 0.598)
    '55.3 [50.8, 59.8]'
    """
    return f"{scale * mean:.1f} [{scale * low:.1f}, {scale * high:.1f}]"
