"""Multi-hop QA examples (HotpotQA, 2WikiMultiHopQA) and their loaders.

Every source (official JSON files, the shipped synthetic samples, Hugging Face
hub datasets) is turned into the same frozen :class:`Example`, so prompts,
contexts and metrics never care where an example came from.

Hub rows are first rewritten into the *official* record shape and then go
through the same validator as files, so one set of checks (and one set of
error messages) covers both. A bad record raises :class:`DataError` naming the
file, the record id and the field, because a 90k-record file that fails with a
bare ``KeyError`` costs an afternoon.

Validation is deliberately limited to shape: it does not check that supporting
facts point at existing sentences, because the real HotpotQA train set has a
few records whose ``sent_id`` runs past the paragraph and they must still load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

FORMATS = ("hotpotqa", "2wiki")
SAMPLE_PREFIX = "sample:"

# Required keys per format (beyond these, 2wiki ``evidences``/``entity_ids``/
# ``answer_id`` and hotpot ``level`` are checked only when present: hub copies
# of 2wiki drop ``entity_ids``, and our own ``to_official_json`` keeps no evidences).
_REQUIRED = ("_id", "question", "answer", "context", "supporting_facts", "type")


class DataError(ValueError):
    """A dataset file, record or hub id is unusable; the message says where and how to fix it."""


@dataclass(frozen=True)
class Paragraph:
    """One context paragraph: a title and its sentences (in the dataset's own split)."""

    title: str
    sentences: tuple[str, ...]


@dataclass(frozen=True)
class Example:
    """One multi-hop question with its context, in a dataset-neutral shape."""

    id: str
    question: str
    answer: str
    paragraphs: tuple[Paragraph, ...]
    supporting_facts: tuple[tuple[str, int], ...]
    """(title, sentence index) pairs, as in the official files."""
    type: str
    """bridge / comparison (hotpot); compositional / comparison / inference / bridge_comparison (2wiki)."""
    dataset: str
    """``hotpotqa`` or ``2wiki``."""
    level: str = ""
    """easy / medium / hard (HotpotQA only)."""
    answer_id: str = ""
    """2Wiki answer entity id: the key into ``id_aliases.json`` for alias-aware scoring."""
    rationale: str = ""
    """A gold chain of thought, where the file has one (optional key ``rationale``, outside the
    official layouts: the tiny world's evaluation worlds write the supporting facts followed by the
    comparison step). The ``gold_rationale`` reference answers from it instead of the bare facts."""

    @property
    def gold_titles(self) -> tuple[str, ...]:
        """Titles named by the supporting facts, in order of first appearance."""
        return tuple(dict.fromkeys(title for title, _ in self.supporting_facts))

    @property
    def supporting_sentences(self) -> list[str]:
        """The supporting-fact sentences, each once, in the order the dataset lists them (none without labels)."""
        by_title = {p.title: p for p in self.paragraphs}
        out: list[str] = []
        for title, i in self.supporting_facts:
            p = by_title.get(title)
            if p is not None and i < len(p.sentences) and p.sentences[i].strip() not in out:
                out.append(p.sentences[i].strip())
        return out

    @property
    def evidence(self) -> str:
        """The supporting-fact sentences joined ("" without labels): the gold rationale of the
        ``gold_rationale`` reference method."""
        return " ".join(self.supporting_sentences)


def _fail(source: str, rid: Any, field: str, problem: str, fix: str) -> DataError:
    return DataError(f"{source}: record {rid}: field {field!r} {problem}; {fix}")


def _got(value: Any) -> str:
    """What a wrong value is, for an error message: its type and a short repr."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


_CONTEXT_SHAPE = "[title, [sentence, ...]]"
_FACTS_SHAPE = "[title, sent_id]"


def _parse_pairs(value: Any, source: str, rid: Any, field: str, item_shape: str) -> list[list]:
    """Check a list of two-element lists whose first item is a title (context entries, supporting facts)."""
    if not isinstance(value, list):
        raise _fail(source, rid, field, f"must be a list of {item_shape}, got {_got(value)}",
                    "use the official layout")
    for i, item in enumerate(value):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)):
            raise _fail(source, rid, f"{field}[{i}]", f"must be {item_shape} with a string title, got {_got(item)}",
                        "use the official layout")
    return value


def check_record(rec: Any, source: str, index: int, fmt: str | None = None,
                 required: tuple[str, ...] = _REQUIRED) -> str:
    """Check the types of an official-format record's fields and return its id.

    ``required`` keys must be present; every other known field is checked only when
    present. ``fmt=None`` (a gold file of either dataset, as ``lmcot score`` reads)
    checks the 2Wiki-only fields whenever they appear. A wrong field raises
    :class:`DataError` naming ``source``, the record id, the field, and what it must be.

    >>> check_record({"_id": "a1", "answer": "Paris"}, "g.json", 0, required=("_id", "answer"))
    'a1'
    >>> check_record({"_id": "a1", "answer": ["Paris"]}, "g.json", 0, required=("_id",))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lmcot.datasets.data.DataError: g.json: record a1: field 'answer' must be a string, got list ['Paris']; fix the ...
    """
    if not isinstance(rec, dict):
        raise DataError(f"{source}: record at index {index} is a {type(rec).__name__}, not an object; "
                        "the file must be a JSON list of official records")
    rid = rec["_id"] if isinstance(rec.get("_id"), str) else f"at index {index}"
    for key in required:
        if key not in rec:
            raise _fail(source, rid, key, "is missing", f"every {fmt or 'gold'} record needs {', '.join(required)}")
    for key in ("_id", "question", "answer", "type", "level", "rationale"):
        if key in rec and not isinstance(rec[key], str):
            raise _fail(source, rid, key, f"must be a string, got {_got(rec[key])}",
                        "fix the record or regenerate the file")
    if "context" in rec:
        for i, (_, sentences) in enumerate(_parse_pairs(rec["context"], source, rid, "context", _CONTEXT_SHAPE)):
            if not (isinstance(sentences, list) and all(isinstance(x, str) for x in sentences)):
                raise _fail(source, rid, f"context[{i}]", f"sentences must be a list of strings, got {_got(sentences)}",
                            "use [title, [sentence, ...]]")
    if "supporting_facts" in rec:
        facts = _parse_pairs(rec["supporting_facts"], source, rid, "supporting_facts", _FACTS_SHAPE)
        for i, (_, sent_id) in enumerate(facts):
            if not isinstance(sent_id, int) or isinstance(sent_id, bool) or sent_id < 0:
                raise _fail(source, rid, f"supporting_facts[{i}]", f"sentence id must be an int >= 0, got {sent_id!r}",
                            "use [title, sent_id]")
    if fmt in ("2wiki", None):
        if "evidences" in rec:
            evidences = rec["evidences"]
            if not (isinstance(evidences, list) and all(isinstance(e, list) and len(e) == 3 for e in evidences)):
                raise _fail(source, rid, "evidences", f"must be a list of [subject, relation, object], got "
                            f"{_got(evidences)}", "use the official 2WikiMultiHopQA layout")
        if "entity_ids" in rec and not isinstance(rec["entity_ids"], str):
            raise _fail(source, rid, "entity_ids", f"must be a string like 'Q1_Q2', got {_got(rec['entity_ids'])}",
                        "use the official 2WikiMultiHopQA layout")
        if rec.get("answer_id") is not None and not isinstance(rec["answer_id"], str):
            raise _fail(source, rid, "answer_id", f"must be a string or null, got {_got(rec['answer_id'])}",
                        "use a Wikidata-style id like 'Q30'")
    return rid


def _parse_record(rec: Any, fmt: str, source: str, index: int) -> Example:
    """Validate one official-format record and convert it to an :class:`Example`."""
    rid = check_record(rec, source, index, fmt)
    for key in ("question", "answer"):
        if not rec[key].strip():
            raise _fail(source, rid, key, "is empty", "drop the record or fill the field")
    if not rec["context"]:
        raise _fail(source, rid, "context", "is empty", "every record needs at least one paragraph")
    paragraphs = tuple(Paragraph(title, tuple(sentences)) for title, sentences in rec["context"])
    facts = tuple((title, sent_id) for title, sent_id in rec["supporting_facts"])
    return Example(id=rid, question=rec["question"], answer=rec["answer"], paragraphs=paragraphs,
                   supporting_facts=facts, type=rec["type"], dataset=fmt, level=rec.get("level", ""),
                   answer_id=(rec.get("answer_id") or "") if fmt == "2wiki" else "",
                   rationale=rec.get("rationale", ""))


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"data format {fmt!r} is not one of {', '.join(FORMATS)} (data.datasets[].format)")


def parse_records(records: Iterable[Any], fmt: str, source: str) -> list[Example]:
    """Validate and convert official-format records; ``source`` names them in errors."""
    _check_format(fmt)
    return [_parse_record(rec, fmt, source, i) for i, rec in enumerate(records)]


def resolve_path(path: str | Path) -> Path:
    """Turn ``sample:<name>`` into the shipped package file ``lmcot/data/<name>.json``; other strings are paths.

    Raises DataError naming the path when the file does not exist.
    """
    text = str(path)
    if text.startswith(SAMPLE_PREFIX):
        name = text[len(SAMPLE_PREFIX):]
        resolved = Path(str(resources.files("lmcot") / "data" / f"{name}.json"))
        if not resolved.is_file():
            shipped = sorted(p.stem for p in resolved.parent.glob("*.json"))
            raise DataError(f"{text}: no shipped sample {resolved.name}; known samples: {', '.join(shipped)}")
        return resolved
    resolved = Path(text).expanduser()
    if not resolved.is_file():
        raise DataError(f"{resolved}: file not found; check the path (for a shipped sample use sample:<name>)")
    return resolved


def load_json_file(path: str | Path, fmt: str) -> list[Example]:
    """Load an official HotpotQA / 2WikiMultiHopQA JSON file (a list of records)."""
    _check_format(fmt)
    resolved = resolve_path(path)
    try:
        records = json.loads(resolved.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{resolved}: not valid JSON ({exc}); the file must be a JSON list of records") from exc
    if not isinstance(records, list):
        raise DataError(f"{resolved}: top level is a {type(records).__name__}, not a list; "
                        "the official files are a JSON list of records")
    return parse_records(records, fmt, str(resolved))


def _maybe_json(value: Any) -> Any:
    """Some hub copies store nested fields as JSON strings; decode those."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _columns_to_pairs(value: Any, second_keys: tuple[str, ...]) -> Any:
    """Hub struct-of-lists (``{"title": [...], "sentences": [...]}``) -> official list of pairs.

    A value of any other shape is returned as it is, for the record check to name.
    """
    value = _maybe_json(value)
    if isinstance(value, dict) and "title" in value:
        second = next((value[k] for k in second_keys if k in value), None)
        titles = value["title"]
        if isinstance(titles, list) and isinstance(second, list) and len(titles) == len(second):
            return [[t, s] for t, s in zip(titles, second)]
        return value
    if isinstance(value, list):  # list of {"title":..., "sentences":...} or already official
        return [[v.get("title"), next((v[k] for k in second_keys if k in v), None)] if isinstance(v, dict) else v
                for v in value]
    return value


def _evidences_to_triples(value: Any) -> Any:
    value = _maybe_json(value)
    if isinstance(value, dict) and {"fact", "relation", "entity"} <= value.keys():
        columns = [value[k] for k in ("fact", "relation", "entity")]
        if all(isinstance(c, list) and len(c) == len(columns[0]) for c in columns):
            return [list(t) for t in zip(*columns)]
    return value


def hub_row_to_official(row: dict) -> dict:
    """Rewrite a hub row (hotpot_qa or a 2wiki copy) into the official record layout."""
    rec = dict(row)
    if "_id" not in rec and "id" in rec:
        rec["_id"] = rec.pop("id")
    if "context" in rec:
        rec["context"] = _columns_to_pairs(rec["context"], ("sentences", "content"))
    if "supporting_facts" in rec:
        rec["supporting_facts"] = _columns_to_pairs(rec["supporting_facts"], ("sent_id",))
    if "evidences" in rec:
        rec["evidences"] = _evidences_to_triples(rec["evidences"])
    return rec


def load_hub(hub_id: str, config: str | None, split: str, fmt: str, limit: int | None = None) -> list[Example]:
    """Load a split with ``datasets.load_dataset`` and convert the hub schema (first ``limit`` rows if set).

    Any loading failure (offline cache miss, unknown id or split) becomes a DataError naming the hub id.
    """
    _check_format(fmt)
    import datasets  # imported here: costly, and only the hub path needs it

    spec = f"{split}[:{limit}]" if limit else split
    source = f"hub {hub_id}" + (f" ({config})" if config else "") + f" split {split}"
    try:
        ds = datasets.load_dataset(hub_id, config or None, split=spec)
    except Exception as exc:  # datasets raises many unrelated types; all mean "cannot load"
        raise DataError(f"{source}: cannot load ({type(exc).__name__}: {exc}); check data.datasets[].hub_id, "
                        "hub_config and the split names, and that the dataset is in the HF cache when "
                        "HF_HUB_OFFLINE=1") from exc
    return parse_records((hub_row_to_official(row) for row in ds), fmt, source)


def load_split(spec: Any, split: str) -> list[Example]:
    """Load the ``train`` or ``dev`` split of a dataset spec (local path if set, else the hub), first ``limit``."""
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train' or 'dev', got {split!r}")
    path = spec.train_path if split == "train" else spec.dev_path
    limit = spec.limit or None
    if path:
        examples = load_json_file(path, spec.format)
    elif spec.hub_id:
        hub_split = spec.train_split if split == "train" else spec.dev_split
        examples = load_hub(spec.hub_id, spec.hub_config or None, hub_split, spec.format, limit)
    else:
        raise DataError(f"dataset {spec.name!r}: no {split}_path and no hub_id; set one of them")
    return examples[:limit] if limit else examples


def to_official_json(examples: Iterable[Example]) -> list[dict]:
    """Write examples back as official records (HotpotQA keys; 2Wiki keys and ``answer_id`` for 2wiki)."""
    out = []
    for ex in examples:
        rec = {"_id": ex.id, "type": ex.type, "question": ex.question,
               "context": [[p.title, list(p.sentences)] for p in ex.paragraphs],
               "supporting_facts": [[t, i] for t, i in ex.supporting_facts], "answer": ex.answer}
        if ex.rationale:
            rec["rationale"] = ex.rationale
        if ex.dataset == "2wiki":
            if ex.answer_id:
                rec["answer_id"] = ex.answer_id
        else:
            rec["level"] = ex.level
        out.append(rec)
    return out
