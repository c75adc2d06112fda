"""Answer EM / F1 exactly as the official HotpotQA and 2WikiMultiHopQA scripts compute them.

The paper reports these numbers, so they must match ``hotpot_evaluate_v1.py``
(hotpotqa/hotpot) and ``2wikimultihop_evaluate_v1.1.py`` (Alab-NII/2wikimultihop)
to the letter: the same normalisation (lower-case, drop punctuation, drop the
articles a/an/the, squeeze whitespace), the same yes/no/noanswer rule (a
yes/no/noanswer on either side that differs from the other side scores 0 F1),
the same per-metric max over gold aliases (2Wiki v1.1), and the same averaging
over *all* gold items, a missing prediction counting 0.

Only the answer metrics are here: LM-guided CoT predicts no supporting facts or
evidence triples. Deviations from the scripts, all for robustness only: an
empty gold list scores 0 instead of dividing by zero; a 2Wiki gold record
without ``answer_id`` just has no aliases instead of a ``KeyError``; a gold
record whose fields have the wrong type (an ``answer`` that is a list, a
``context`` that is not a list of [title, sentences], ...) is rejected before
scoring with a :class:`~lmcot.datasets.data.DataError` naming the file, the record id,
the field and what it must be (the loaders' own check), never a traceback from
inside the normaliser.
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from lmcot.datasets.data import DataError, Example, check_record, resolve_path

log = logging.getLogger(__name__)

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPECIAL = ("yes", "no", "noanswer")
METRIC_KEYS = ("em", "f1", "prec", "recall")
GOLD_REQUIRED = ("_id", "answer")
"""What answer scoring needs of a gold record; every other official field is type-checked when present."""


def normalize_answer(s: str) -> str:
    """Lower-case, strip punctuation, remove articles, squeeze whitespace (official order).

    >>> normalize_answer("The  Eiffel-Tower!")
    'eiffeltower'
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> tuple[float, float, float]:
    """Token F1, precision and recall of normalised answers, with the official yes/no/noanswer rule.

    >>> f1_score("yes", "no")
    (0.0, 0.0, 0.0)
    >>> f1_score("Paris France", "paris")
    (0.6666666666666666, 0.5, 1.0)
    """
    pred = normalize_answer(prediction)
    gold = normalize_answer(ground_truth)
    if (pred in _SPECIAL or gold in _SPECIAL) and pred != gold:
        return 0.0, 0.0, 0.0
    pred_tokens, gold_tokens = pred.split(), gold.split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0, 0.0, 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall), precision, recall


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def answer_metrics(prediction: str, gold_answers: Sequence[str]) -> dict:
    """Max of each of em, f1, prec, recall over the gold aliases (each metric maximised on its own, as v1.1 does)."""
    if isinstance(gold_answers, str):  # a bare string is a Sequence of characters: never what is meant
        gold_answers = [gold_answers]
    if not gold_answers:
        raise ValueError("answer_metrics needs at least one gold answer")
    best = dict.fromkeys(METRIC_KEYS, 0.0)
    for gold in gold_answers:
        em = exact_match_score(prediction, gold)
        f1, prec, recall = f1_score(prediction, gold)
        for key, value in zip(METRIC_KEYS, (em, f1, prec, recall)):
            best[key] = max(best[key], value)
    return best


def _gold_fields(item: dict | Example, source: str, index: int) -> tuple[str, str, str]:
    """(id, answer, answer_id) of an official gold record (type-checked) or an Example."""
    if isinstance(item, Example):
        return item.id, item.answer, item.answer_id
    rid = check_record(item, source, index, required=GOLD_REQUIRED)
    return rid, item["answer"], item.get("answer_id") or ""


def _answers_of(predictions: Mapping, source: str = "predictions") -> Mapping:
    """Official prediction files nest answers under "answer"; a flat {id: text} mapping is accepted too."""
    answers = predictions.get("answer")
    if isinstance(answers, Mapping):
        return answers
    if "answer" in predictions and "sp" in predictions:  # official layout with a broken "answer"
        raise DataError(f'{source}: "answer" must be an object {{id: text}}, got {type(answers).__name__}; '
                        'use the official {"answer": {id: text}, "sp": {...}} layout')
    return predictions


def score_predictions(gold: Sequence[dict] | Sequence[Example], predictions: Mapping,
                      aliases: Mapping[str, Sequence[str]] | None = None, *, source: str = "gold") -> dict:
    """Average answer metrics over every gold item: {em, f1, prec, recall} in 0..1, plus n and missing.

    ``predictions`` is the official ``{"answer": {id: text}, ...}`` or a flat ``{id: text}``.
    ``aliases`` (from :func:`load_aliases`) adds the aliases of a gold record's ``answer_id``.
    Gold records are type-checked as the loaders check them (:func:`lmcot.datasets.data.check_record`):
    a wrong field raises :class:`DataError` naming ``source``, the record id and the field.

    >>> score_predictions([{"_id": "a", "answer": "Paris"}], {"a": "paris"})["em"]
    1.0
    >>> score_predictions([{"_id": "a", "answer": "Paris", "context": "Paris"}], {"a": "x"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lmcot.datasets.data.DataError: gold: record a: field 'context' must be a list of [title, [sentence, ...]], got str ...
    """
    answers = _answers_of(predictions)
    aliases = aliases or {}
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    missing = []
    for index, item in enumerate(gold):
        rid, answer, answer_id = _gold_fields(item, source, index)
        if rid not in answers:
            missing.append(rid)
            continue
        golds = gold_answers(answer, answer_id, aliases)
        pred = answers[rid]
        scores = answer_metrics("" if pred is None else str(pred), golds)
        for key in METRIC_KEYS:
            totals[key] += scores[key]
    n = len(gold)
    if missing:
        log.warning("%d of %d gold items have no prediction (scored 0), e.g. %s", len(missing), n, missing[:3])
    result = {key: (value / n if n else 0.0) for key, value in totals.items()}
    result.update(n=n, missing=len(missing))
    return result


def _read_json(path: str | Path, what: str) -> Any:
    resolved = resolve_path(path)
    try:
        return json.loads(resolved.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{resolved}: the {what} is not valid JSON ({exc})") from exc


def gold_answers(answer: str, answer_id: str, aliases: dict | None) -> list[str]:
    """The gold answer first, then its other aliases (2Wiki's ``answer_id`` into ``id_aliases.json``).

    >>> gold_answers("USA", "Q30", {"Q30": ["USA", "United States", "American"]})
    ['USA', 'United States', 'American']
    >>> gold_answers("Paris", "", None)
    ['Paris']
    """
    return [answer] + [a for a in (aliases or {}).get(answer_id or "", ()) if a != answer]


def dataset_aliases(spec) -> dict[str, list[str]]:
    """The aliases of a dataset spec (``aliases_path``), or none."""
    return load_aliases(spec.aliases_path) if spec.aliases_path else {}


def load_aliases(path: str | Path) -> dict[str, list[str]]:
    """Read 2Wiki ``id_aliases.json``: entity id -> aliases plus demonyms.

    The official file is JSON Lines, ``{"Q_id": ..., "aliases": [...], "demonyms": [...]}`` per line;
    a plain JSON object ``{id: [alias, ...]}`` is accepted too.
    """
    resolved = resolve_path(path)
    text = resolved.read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and "Q_id" not in whole:
        for key, value in whole.items():
            if not (isinstance(value, list) and all(isinstance(a, str) for a in value)):
                raise DataError(f"{resolved}: entity {key}: aliases must be a list of strings, got "
                                f"{type(value).__name__}; use {{id: [alias, ...]}} or the official JSON Lines")
        return {str(k): list(v) for k, v in whole.items()}
    out: dict[str, list[str]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            names = rec["aliases"] + rec.get("demonyms", [])
            if not (isinstance(rec["Q_id"], str) and isinstance(names, list)
                    and all(isinstance(a, str) for a in names)):
                raise TypeError("Q_id must be a string, aliases and demonyms lists of strings")
            out[rec["Q_id"]] = list(dict.fromkeys(names))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{resolved}: line {lineno}: expected one JSON object per line with "
                            f"Q_id, aliases, demonyms ({type(exc).__name__}: {exc}); "
                            "use the official id_aliases.json layout") from exc
    return out


def score_files(gold_path: str | Path, predictions_path: str | Path,
                aliases_path: str | Path | None = None) -> dict:
    """Score an official prediction file against an official gold file (HotpotQA or 2Wiki).

    Both layouts are read alike: the one difference that matters to answer scoring is 2Wiki's
    ``answer_id``, through which the aliases (``id_aliases.json``) apply, as in the official v1.1
    script; HotpotQA records have none, so aliases never touch them.
    """
    gold = _read_json(gold_path, "gold file")
    if not isinstance(gold, list):
        raise DataError(f"{gold_path}: the gold file must be a JSON list of official records")
    predictions = _read_json(predictions_path, "prediction file")
    if not isinstance(predictions, dict):
        raise DataError(f"{predictions_path}: the prediction file must be a JSON object "
                        '{"answer": {id: text}, "sp": {...}}')
    _answers_of(predictions, str(predictions_path))  # a broken "answer" fails before any scoring
    aliases = load_aliases(aliases_path) if aliases_path else None
    return score_predictions(gold, predictions, aliases, source=str(gold_path))
