"""The context text given to both LMs: paragraphs rendered one per line, optionally capped.

Inference never looks at gold labels: by default (``all``) paragraphs keep the
dataset's order, or a shuffle seeded by the question id (``shuffled``), and any cut
falls where it falls. ``ranked`` reads only the question: paragraphs sharing its rarer
words come first, each followed by the paragraphs its text names by title (the next
hop), so a cut drops the least related paragraphs (a TF-IDF ranker with title links,
the classic first stage of multi-hop QA pipelines). Two oracle settings use the
supporting facts and are labelled as such in reports: ``gold_first`` puts the gold paragraphs first (a cut then removes
distractors before evidence) and ``gold`` keeps only them (the gold-context setting).

``data.context_max_tokens`` is an optional cost cap on the context alone; whatever it
leaves, each model then fits its whole prompt to its own input limit
(:mod:`lmcot.prompting.fitting`).

The budget is counted with the real tokenizer that will read the prompt. Fitting
is a binary search over whole paragraphs, then over the sentences of the first
paragraph that does not fit, so a long context costs O(log n) tokenizer calls,
not one per sentence. An example is never dropped: at worst the first gold
paragraph's title (and the start of its first sentence) is cut token-wise.

:func:`shorten_lines` is the one way a context is shortened: here (lines are paragraphs,
the boundary line is cut by sentences) and in each model's prompt fitter
(:mod:`lmcot.prompting.fitting`: the boundary line is cut by tokens, or words).
"""

from __future__ import annotations

import math
import random
import re
import zlib
from typing import Callable, Sequence

from lmcot.datasets.data import Example, Paragraph

CONTEXT_MODES = ("all", "shuffled", "ranked", "gold_first", "gold")
ORACLE_MODES = ("gold_first", "gold")
"""Modes that read the gold supporting facts: an oracle setting, never a fair evaluation."""


def order_paragraphs(example: Example, mode: str = "all") -> list[Paragraph]:
    """Paragraphs for ``mode`` (see the module doc).

    In ``gold`` mode an example without usable supporting facts (e.g. a test split)
    falls back to all paragraphs rather than an empty context.
    """
    if mode not in CONTEXT_MODES:
        raise ValueError(f"data.context_mode={mode!r} is not one of {', '.join(CONTEXT_MODES)}")
    if mode == "all":
        return list(example.paragraphs)
    if mode == "shuffled":
        order = list(example.paragraphs)
        random.Random(zlib.crc32(example.id.encode())).shuffle(order)
        return order
    if mode == "ranked":
        return rank_paragraphs(example.question, example.paragraphs)
    by_title: dict[str, Paragraph] = {}
    for p in example.paragraphs:
        by_title.setdefault(p.title, p)
    gold = [by_title[t] for t in example.gold_titles if t in by_title]
    if mode == "gold" and gold:
        return gold
    gold_ids = {id(p) for p in gold}
    return gold + [p for p in example.paragraphs if id(p) not in gold_ids]


_STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or is was were are be been did do does which who whom whose what "
    "when where why how that this these those it its as than first". split())


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOPWORDS}


def rank_paragraphs(question: str, paragraphs: Sequence[Paragraph]) -> list[Paragraph]:
    """Paragraphs ordered by relevance to ``question`` alone, following title links (``ranked`` mode).

    A paragraph's score is the summed inverse document frequency (over this question's
    paragraphs) of the question words it contains, its title's words counting twice. The
    best paragraph comes first; then, repeatedly, any paragraph whose title the chosen
    text mentions (best score first: the bridge entity of a second hop), else the next
    best by score. Ties keep the dataset order, so the result is deterministic.

    >>> from lmcot.datasets.data import Paragraph
    >>> ps = [Paragraph("Oslo", ("Oslo is a city.",)), Paragraph("Ann Lee", ("Ann Lee was born in Bergen.",)),
    ...       Paragraph("Bergen", ("Bergen is in Vestland.",)), Paragraph("Moss", ("Moss is small.",))]
    >>> [p.title for p in rank_paragraphs("In which region was Ann Lee born?", ps)]
    ['Ann Lee', 'Bergen', 'Oslo', 'Moss']
    """
    bags = [(_words(p.title), _words(" ".join(p.sentences))) for p in paragraphs]
    n = len(paragraphs)
    idf = {w: math.log(1 + n / sum(w in t or w in b for t, b in bags)) for w in _words(question)
           if any(w in t or w in b for t, b in bags)}
    # fsum: the exact sum whatever the order of the terms, which follows the process's string hashing
    # (PYTHONHASHSEED); a plain sum could break a tie between two paragraphs differently in each process.
    scores = [math.fsum(v * (2 * (w in t) + (w in b)) for w, v in idf.items()) for t, b in bags]
    rest = sorted(range(n), key=lambda i: -scores[i])
    order: list[int] = []
    chosen_text = ""
    while rest:
        linked = [i for i in rest if paragraphs[i].title and paragraphs[i].title in chosen_text]
        pick = linked[0] if linked else rest[0]
        order.append(pick)
        rest.remove(pick)
        chosen_text += " " + " ".join(paragraphs[pick].sentences)
    return [paragraphs[i] for i in order]


def render_paragraph(paragraph: Paragraph, n_sentences: int | None = None) -> str:
    """``Title: sentence sentence ...`` on one line (first ``n_sentences`` sentences if given)."""
    sentences = paragraph.sentences if n_sentences is None else paragraph.sentences[:n_sentences]
    body = " ".join(s.strip() for s in sentences if s.strip())
    return f"{paragraph.title}: {body}" if body else f"{paragraph.title}:"


def largest_fitting(n: int, fits: Callable[[int], bool]) -> int:
    """Largest k in 0..n with ``fits(k)`` (monotone: true up to some k); 0 when none is checked true.

    ``fits(0)`` is never called: 0 is the answer when nothing larger fits.

    >>> largest_fitting(10, lambda k: k <= 7), largest_fitting(3, lambda k: False)
    (7, 0)
    """
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def shorten_lines(lines: Sequence[str], fits: Callable[[str], bool],
                  cut_line: Callable[[int], tuple[int, Callable[[int], str]]]) -> str:
    """The longest start of the joined ``lines`` that ``fits``: whole lines, then a cut of the next line.

    ``cut_line(k)`` splits line ``k`` into units (sentences, tokens, words) and returns their number
    and a function giving the line cut to its first ``j`` units. Both searches are binary
    (:func:`largest_fitting`, ``fits`` taken as monotone), so a long context costs O(log n) calls of
    ``fits``. The caller has checked that the whole text does not fit. Returns "" when not even one
    unit of the first line fits; what to do then is the caller's choice.

    >>> lines = ["a b", "c d e", "f"]
    >>> by_words = lambda k: (len(lines[k].split()), lambda j: " ".join(lines[k].split()[:j]))
    >>> shorten_lines(lines, lambda text: len(text) <= 7, by_words).split()
    ['a', 'b', 'c', 'd']
    >>> shorten_lines(lines, lambda text: len(text) <= 0, by_words)
    ''
    """
    k = largest_fitting(len(lines) - 1, lambda j: fits("\n".join(lines[:j])))
    head = list(lines[:k])
    n_units, cut = cut_line(k)
    m = largest_fitting(n_units, lambda j: fits("\n".join(head + [cut(j)])))
    return "\n".join(head + [cut(m)]) if m else "\n".join(head)


def _truncate_tokens(text: str, tokenizer, max_tokens: int, count: Callable[[str], int]) -> str:
    """Cut ``text`` to its first ``max_tokens`` tokens (re-checked: decode/encode may not round-trip)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = min(max_tokens, len(ids))
    while keep > 0:
        cut = tokenizer.decode(ids[:keep], skip_special_tokens=True).strip()
        if cut and count(cut) <= max_tokens:
            return cut
        keep -= 1
    return text.split(":", 1)[0]  # a budget below one token: still name the paragraph


def fit_lines(paragraphs: Sequence[Paragraph], tokenizer, max_tokens: int) -> str:
    """Join rendered paragraphs, keeping as much as fits in ``max_tokens`` tokens (see module doc)."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def by_sentences(k: int) -> tuple[int, Callable[[int], str]]:
        return len(paragraphs[k].sentences), lambda j: render_paragraph(paragraphs[k], j)

    lines = [render_paragraph(p) for p in paragraphs]
    full = "\n".join(lines)
    if count(full) <= max_tokens:
        return full
    # a rendered paragraph is never empty, so "" means not one sentence of the first paragraph fits
    fitted = shorten_lines(lines, lambda text: count(text) <= max_tokens, by_sentences)
    return fitted or _truncate_tokens(render_paragraph(paragraphs[0], 1), tokenizer, max_tokens, count)


def build_context(example: Example, *, mode: str = "all", tokenizer=None, max_tokens: int = 0) -> str:
    """The context string for ``example``: one ``Title: sentences`` line per paragraph, ordered by ``mode``.

    With a ``tokenizer`` and ``max_tokens > 0`` the text is fitted to that many tokens
    (counted without special tokens); without a tokenizer no budget is applied.
    Raises ValueError for an unknown ``mode`` (``data.context_mode``) or a negative budget.
    """
    if max_tokens < 0:
        raise ValueError(f"data.context_max_tokens must be >= 0, got {max_tokens}")
    paragraphs = order_paragraphs(example, mode)
    if tokenizer is None or max_tokens == 0:
        return "\n".join(render_paragraph(p) for p in paragraphs)
    return fit_lines(paragraphs, tokenizer, max_tokens)
