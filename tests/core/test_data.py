"""Loaders: the shipped synthetic samples, malformed files, hub-schema conversion, load_split."""

import copy
import json
import re
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lmcot.datasets.data import (DataError, Example, Paragraph, load_hub, load_json_file, load_split, resolve_path,  # noqa: E402
                        to_official_json)
from lmcot.scoring.metrics import normalize_answer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = {
    "hotpotqa_synthetic_train": ("hotpotqa", 100, {"bridge", "comparison"}),
    "hotpotqa_synthetic_dev": ("hotpotqa", 40, {"bridge", "comparison"}),
    "2wiki_synthetic_train": ("2wiki", 40, {"compositional", "comparison", "inference", "bridge_comparison"}),
    "2wiki_synthetic_dev": ("2wiki", 40, {"compositional", "comparison", "inference", "bridge_comparison"}),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_shipped_samples_are_consistent(name):
    fmt, count, types = SAMPLES[name]
    examples = load_json_file(f"sample:{name}", fmt)
    assert len(examples) == count
    assert {ex.type for ex in examples} == types
    assert len({ex.id for ex in examples}) == count
    assert {ex.answer.lower() for ex in examples} & {"yes", "no"}, "yes/no questions expected"
    for ex in examples:
        assert ex.dataset == fmt and (ex.level in ("easy", "medium", "hard")) == (fmt == "hotpotqa")
        paragraphs = {p.title: p for p in ex.paragraphs}
        assert len(paragraphs) == len(ex.paragraphs) >= 8
        assert len(ex.gold_titles) == (4 if ex.type == "bridge_comparison" else 2)
        for title, sent_id in ex.supporting_facts:
            assert sent_id < len(paragraphs[title].sentences), (ex.id, title, sent_id)
        gold_text = normalize_answer(" ".join(s for t in ex.gold_titles for s in paragraphs[t].sentences))
        if ex.answer not in ("yes", "no"):
            assert normalize_answer(ex.answer) in gold_text, (ex.id, ex.answer)


def test_samples_total_under_one_megabyte_and_train_dev_questions_disjoint():
    files = list((ROOT / "lmcot" / "data").glob("*.json"))
    assert sum(f.stat().st_size for f in files) < 1_000_000
    for prefix, fmt in (("hotpotqa", "hotpotqa"), ("2wiki", "2wiki")):
        train = {ex.question for ex in load_json_file(f"sample:{prefix}_synthetic_train", fmt)}
        dev = {ex.question for ex in load_json_file(f"sample:{prefix}_synthetic_dev", fmt)}
        assert not train & dev


def test_generator_reproduces_shipped_files():
    tool = ROOT / "tools" / "make_synthetic_data.py"
    done = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_gold_titles_keep_first_appearance_order():
    ex = Example("x", "q", "a", (Paragraph("B", ("s",)),), (("B", 1), ("A", 0), ("B", 0)), "bridge", "hotpotqa")
    assert ex.gold_titles == ("B", "A")


def test_evidence_is_the_supporting_sentences_in_fact_order_without_repeats_or_bad_ids():
    ex = Example("x", "q", "a", (Paragraph("A", ("A one.", " A two.")), Paragraph("B", ("B one.",))),
                 (("B", 0), ("A", 1), ("B", 0), ("A", 9), ("Z", 0)), "bridge", "hotpotqa")
    assert ex.evidence == "B one. A two."
    assert Example("y", "q", "a", ex.paragraphs, (), "bridge", "hotpotqa").evidence == ""


@pytest.mark.parametrize("fmt", ["hotpotqa", "2wiki"])
def test_official_json_round_trip(tmp_path, fmt):
    name = "hotpotqa_synthetic_dev" if fmt == "hotpotqa" else "2wiki_synthetic_dev"
    examples = load_json_file(f"sample:{name}", fmt)
    path = tmp_path / "round.json"
    path.write_text(json.dumps(to_official_json(examples)))
    assert load_json_file(path, fmt) == examples


def _record():
    return {"_id": "rec-7", "question": "Who?", "answer": "Someone", "type": "bridge", "level": "easy",
            "supporting_facts": [["T", 0]], "context": [["T", ["Sentence one."]]]}


@pytest.mark.parametrize("field, mutate", [
    ("answer", lambda r: r.pop("answer")),
    ("context", lambda r: r.pop("context")),
    ("question", lambda r: r.update(question=5)),
    ("supporting_facts", lambda r: r.update(supporting_facts="T")),
    ("supporting_facts[0]", lambda r: r.update(supporting_facts=[["T", "zero"]])),
    ("context", lambda r: r.update(context=[])),
    ("context[0]", lambda r: r.update(context=[["T", "not a list"]])),
    ("question", lambda r: r.update(question="  ")),
    ("answer", lambda r: r.update(answer="")),
])
def test_malformed_records_name_file_record_and_field(tmp_path, field, mutate):
    good, bad = _record(), _record()
    mutate(bad)
    path = tmp_path / "broken_dev.json"
    path.write_text(json.dumps([good, bad]))
    with pytest.raises(DataError) as err:
        load_json_file(path, "hotpotqa")
    message = str(err.value)
    assert "broken_dev.json" in message and "rec-7" in message and repr(field) in message


def test_malformed_files(tmp_path):
    (tmp_path / "notjson.json").write_text("[{")
    with pytest.raises(DataError, match="notjson.json.*not valid JSON"):
        load_json_file(tmp_path / "notjson.json", "hotpotqa")
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(DataError, match="obj.json.*not a list"):
        load_json_file(tmp_path / "obj.json", "hotpotqa")
    (tmp_path / "noid.json").write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(DataError, match="index 0.*'_id'"):
        load_json_file(tmp_path / "noid.json", "hotpotqa")
    bad = dict(_record(), evidences=[["only", "two"]])
    (tmp_path / "wiki.json").write_text(json.dumps([bad]))
    with pytest.raises(DataError, match="wiki.json.*rec-7.*'evidences'"):
        load_json_file(tmp_path / "wiki.json", "2wiki")
    with pytest.raises(ValueError, match="format"):
        load_json_file(tmp_path / "wiki.json", "squad")


def test_resolve_path_errors_name_the_path(tmp_path):
    assert resolve_path("sample:hotpotqa_synthetic_dev").name == "hotpotqa_synthetic_dev.json"
    with pytest.raises(DataError, match="sample:nope.*known samples: .*hotpotqa_synthetic_dev"):
        resolve_path("sample:nope")
    with pytest.raises(DataError, match="missing.json"):
        resolve_path(str(tmp_path / "missing.json"))


def _hub_rows():
    """Rows as the hub's hotpot_qa and a 2wiki copy store them (struct-of-lists columns)."""
    hotpot = {"id": "h1", "question": "Q?", "answer": "A", "type": "bridge", "level": "hard",
              "supporting_facts": {"title": ["T1", "T2"], "sent_id": [0, 1]},
              "context": {"title": ["T1", "T2"], "sentences": [["a."], ["b.", "c A."]]}}
    wiki = {"_id": "w1", "type": "comparison", "question": "Q?", "answer": "yes",
            "supporting_facts": {"title": ["T1"], "sent_id": [0]},
            "context": {"title": ["T1"], "content": [["a."]]},
            "evidences": {"fact": ["T1"], "relation": ["country"], "entity": ["X"]}}
    return hotpot, wiki


@pytest.mark.parametrize("fmt", ["hotpotqa", "2wiki"])
def test_load_hub_converts_hub_schema(tmp_path, fmt):
    hotpot, wiki = _hub_rows()
    row = hotpot if fmt == "hotpotqa" else wiki
    rows = [row, dict(copy.deepcopy(row), **{"id" if "id" in row else "_id": "second"})]
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_hub(str(tmp_path), None, "validation", fmt, limit=1)
    assert len(examples) == 1
    ex = examples[0]
    assert ex.id == row.get("id", row.get("_id")) and ex.dataset == fmt
    assert ex.paragraphs[0] == Paragraph("T1", ("a.",))
    assert ex.supporting_facts[0] == ("T1", 0)


def test_load_hub_failure_names_hub_id():
    with pytest.raises(DataError, match="no-such-owner/no-such-dataset"):
        load_hub("no-such-owner/no-such-dataset", None, "train", "hotpotqa")


def _spec(**kw):
    base = dict(name="hp", format="hotpotqa", train_path="sample:hotpotqa_synthetic_train",
                dev_path="sample:hotpotqa_synthetic_dev", hub_id="", hub_config="", train_split="train",
                dev_split="validation", limit=0, aliases_path="")
    return SimpleNamespace(**{**base, **kw})


def test_load_split_paths_limit_and_hub_fallback(tmp_path):
    assert len(load_split(_spec(), "train")) == 100
    dev = load_split(_spec(limit=5), "dev")
    assert [ex.id for ex in dev] == [ex.id for ex in load_split(_spec(), "dev")[:5]]
    hotpot, _ = _hub_rows()
    (tmp_path / "validation.jsonl").write_text(json.dumps(hotpot) + "\n")
    assert load_split(_spec(dev_path="", hub_id=str(tmp_path)), "dev")[0].id == "h1"
    with pytest.raises(DataError, match="no dev_path and no hub_id"):
        load_split(_spec(dev_path=""), "dev")
    with pytest.raises(ValueError, match="split"):
        load_split(_spec(), "test")


def _wiki_record():
    return {"_id": "w-3", "type": "comparison", "question": "Who?", "answer": "yes", "answer_id": None,
            "context": [["T", ["Sentence one."]]], "supporting_facts": [["T", 0]],
            "evidences": [["T", "country", "X"]], "entity_ids": "Q1_Q2"}


@pytest.mark.parametrize("fmt", ["hotpotqa", "2wiki"])
@pytest.mark.parametrize("field, value, expected", [
    ("answer", ["Someone", "Else"], "must be a string, got list"),
    ("answer", None, "must be a string, got NoneType"),
    ("_id", 7, "must be a string, got int"),
    ("type", {"kind": "bridge"}, "must be a string, got dict"),
    ("context", {"title": ["T"], "sentences": [["s"]]}, r"must be a list of \[title, \[sentence, \.\.\.\]\], got dict"),
    ("context", "T: Sentence one.", r"must be a list of \[title, \[sentence, \.\.\.\]\], got str"),
    ("context", [["T"]], r"must be \[title, \[sentence, \.\.\.\]\] with a string title"),
    ("context", [[1, ["s"]]], r"must be \[title, \[sentence, \.\.\.\]\] with a string title"),
    ("context", [["T", "Sentence one."]], "sentences must be a list of strings, got str"),
    ("context", [["T", ["s", 2]]], "sentences must be a list of strings"),
    ("supporting_facts", [["T"]], r"must be \[title, sent_id\]"),
    ("supporting_facts", [["T", -1]], "sentence id must be an int >= 0"),
])
def test_wrong_field_types_name_the_record_field_and_expectation(tmp_path, fmt, field, value, expected):
    bad = _record() if fmt == "hotpotqa" else _wiki_record()
    rid = bad["_id"] if field != "_id" else "at index 1"
    bad[field] = value
    good = _record() if fmt == "hotpotqa" else _wiki_record()
    path = tmp_path / "gold.json"
    path.write_text(json.dumps([good, bad]))
    with pytest.raises(DataError) as err:  # a ValueError, never a KeyError/TypeError from deep inside
        load_json_file(path, fmt)
    message = str(err.value)
    assert "gold.json" in message and f"record {rid}" in message and f"'{field}" in message, message
    assert re.search(expected, message), message


@pytest.mark.parametrize("field, value", [("answer_id", ["Q1"]), ("answer_id", 30), ("entity_ids", ["Q1", "Q2"]),
                                          ("evidences", [["T", "country"]]), ("evidences", "T country X")])
def test_wrong_2wiki_field_types_are_rejected(tmp_path, field, value):
    bad = dict(_wiki_record(), **{field: value})
    (tmp_path / "w.json").write_text(json.dumps([bad]))
    with pytest.raises(DataError, match=rf"w\.json: record w-3: field '{field}' must be"):
        load_json_file(tmp_path / "w.json", "2wiki")


@pytest.mark.parametrize("fmt, column, value", [
    ("hotpotqa", "context", {"title": "T1", "sentences": [["a."]]}),        # title not a list
    ("hotpotqa", "context", {"title": ["T1", "T2"], "sentences": [["a."]]}),  # columns of different lengths
    ("hotpotqa", "context", [{"sentences": ["a."]}]),                       # entry without a title
    ("hotpotqa", "supporting_facts", {"title": ["T1"], "sent_id": 0}),
    ("2wiki", "evidences", {"fact": ["T1"], "relation": "country", "entity": ["X"]}),
    ("hotpotqa", "answer", ["A", "B"]),
])
def test_malformed_hub_rows_fail_with_the_record_and_field(tmp_path, fmt, column, value):
    hotpot, wiki = _hub_rows()
    row = dict(hotpot if fmt == "hotpotqa" else wiki, **{column: value})
    (tmp_path / "validation.jsonl").write_text(json.dumps(row) + "\n")
    rid = row.get("id", row.get("_id"))
    with pytest.raises(DataError, match=rf"record {rid}: field '{column}(\[0\])?' must"):
        load_hub(str(tmp_path), None, "validation", fmt)
