"""The answer metrics follow the official HotpotQA / 2Wiki scripts, edge cases included."""

import json
import re

import pytest

from lmcot.datasets.data import DataError, load_json_file
from lmcot.scoring.metrics import (answer_metrics, exact_match_score, f1_score, load_aliases, normalize_answer,
                           score_files, score_predictions)


@pytest.mark.parametrize("raw, normalized", [
    ("The Beatles", "beatles"),
    ("an apple a day", "apple day"),
    ("Theatre", "theatre"),                     # "the" only as a whole word
    ("  Hello,   World!  ", "hello world"),
    ("U.S.A.", "usa"),
    ("rock-and-roll", "rockandroll"),           # punctuation removed, not replaced by space
    ("A", ""),
    ("", ""),
    ("Año Nuevo", "año nuevo"),                 # non-ASCII kept, only string.punctuation removed
])
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


@pytest.mark.parametrize("pred, gold, em, f1, prec, recall", [
    ("Paris", "paris", 1.0, 1.0, 1.0, 1.0),
    ("the Paris", "Paris.", 1.0, 1.0, 1.0, 1.0),
    ("Paris France", "Paris", 0.0, 2 / 3, 0.5, 1.0),
    ("Paris", "Paris France", 0.0, 2 / 3, 1.0, 0.5),
    ("London", "Paris", 0.0, 0.0, 0.0, 0.0),
    ("yes", "no", 0.0, 0.0, 0.0, 0.0),
    ("Yes.", "yes", 1.0, 1.0, 1.0, 1.0),
    ("yes it is", "yes", 0.0, 0.0, 0.0, 0.0),     # gold is yes/no and differs: zero even with overlap
    ("yes", "yes sir", 0.0, 0.0, 0.0, 0.0),        # prediction is yes/no and differs
    ("noanswer", "noanswer", 1.0, 1.0, 1.0, 1.0),
    ("noanswer", "Paris", 0.0, 0.0, 0.0, 0.0),
    ("", "Paris", 0.0, 0.0, 0.0, 0.0),             # empty prediction
    ("", "", 1.0, 0.0, 0.0, 0.0),                  # official: EM true, F1 zero (no common token)
    ("a a b", "a b b", 0.0, 2 / 3, 1.0, 0.5),      # articles vanish: "b" vs "b b"
    ("x x y", "x y y", 0.0, 2 / 3, 2 / 3, 2 / 3),  # Counter overlap, not set overlap
])
def test_em_f1_table(pred, gold, em, f1, prec, recall):
    assert exact_match_score(pred, gold) == em
    got = f1_score(pred, gold)
    assert got == pytest.approx((f1, prec, recall))


def test_answer_metrics_takes_max_per_metric_over_aliases():
    got = answer_metrics("New York City", ["New York", "NYC", "new york city"])
    assert got == {"em": 1.0, "f1": 1.0, "prec": 1.0, "recall": 1.0}
    got = answer_metrics("Valdoria republic", ["Valdoria", "Republic of Valdoria"])
    # vs "valdoria": f1 2/3, prec 1/2, recall 1; vs "republic of valdoria": f1 4/5, prec 1, recall 2/3.
    # Official v1.1 maximises each metric on its own, so prec and recall come from different aliases.
    assert got == pytest.approx({"em": 0.0, "f1": 0.8, "prec": 1.0, "recall": 1.0})
    assert answer_metrics("Paris", "Paris")["em"] == 1.0  # a bare string is one answer, not characters
    with pytest.raises(ValueError):
        answer_metrics("x", [])


def test_score_predictions_counts_missing_as_zero():
    gold = [{"_id": "a", "answer": "Paris"}, {"_id": "b", "answer": "yes"}, {"_id": "c", "answer": "Rome"}]
    preds = {"answer": {"a": "paris", "b": "no"}, "sp": {}}
    got = score_predictions(gold, preds)
    assert got["n"] == 3 and got["missing"] == 1
    assert got["em"] == pytest.approx(1 / 3) and got["f1"] == pytest.approx(1 / 3)
    assert score_predictions(gold, {"a": "paris"})["em"] == pytest.approx(1 / 3)  # flat {id: text} too
    assert score_predictions([], preds)["n"] == 0


def test_score_predictions_uses_aliases_through_answer_id():
    gold = [{"_id": "a", "answer": "Valdoria", "answer_id": "Q1"}]
    preds = {"answer": {"a": "Valdorian"}}
    assert score_predictions(gold, preds)["em"] == 0.0
    assert score_predictions(gold, preds, {"Q1": ["Republic of Valdoria", "Valdorian"]})["em"] == 1.0
    assert score_predictions(gold, preds, {"Q2": ["Valdorian"]})["em"] == 0.0


def test_score_files_on_hand_computed_pair(tmp_path):
    gold = [
        {"_id": "h1", "question": "q", "answer": "Lake Ostra", "type": "bridge", "level": "easy",
         "supporting_facts": [], "context": [["T", ["s"]]]},
        {"_id": "h2", "question": "q", "answer": "no", "type": "comparison", "level": "easy",
         "supporting_facts": [], "context": [["T", ["s"]]]},
        {"_id": "h3", "question": "q", "answer": "1931", "type": "bridge", "level": "hard",
         "supporting_facts": [], "context": [["T", ["s"]]]},
        {"_id": "h4", "question": "q", "answer": "the Blue Fox Inn", "type": "bridge", "level": "hard",
         "supporting_facts": [], "context": [["T", ["s"]]]},
    ]
    preds = {"answer": {"h1": "ostra", "h2": "No.", "h4": "Blue Fox"}, "sp": {"h1": []}}
    (tmp_path / "gold.json").write_text(json.dumps(gold))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    got = score_files(tmp_path / "gold.json", tmp_path / "pred.json")
    # h1: "ostra" vs "lake ostra": p 1, r 1/2, f1 2/3.  h2: exact.  h3: missing (0).
    # h4: "blue fox" vs "blue fox inn": p 1, r 2/3, f1 4/5.
    assert got["n"] == 4 and got["missing"] == 1
    assert got["em"] == pytest.approx(1 / 4)
    assert got["f1"] == pytest.approx((2 / 3 + 1 + 0 + 4 / 5) / 4)
    assert got["prec"] == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert got["recall"] == pytest.approx((1 / 2 + 1 + 0 + 2 / 3) / 4)


def test_score_files_2wiki_with_official_alias_file(tmp_path):
    gold = [{"_id": "w1", "type": "compositional", "question": "q", "context": [["T", ["s"]]],
             "supporting_facts": [], "evidences": [], "answer": "Norkaar", "entity_ids": "Q1_Q2",
             "evidences_id": [], "answer_id": "Q9"},
            {"_id": "w2", "type": "comparison", "question": "q", "context": [["T", ["s"]]],
             "supporting_facts": [], "evidences": [], "answer": "yes", "entity_ids": "Q3_Q4",
             "evidences_id": [], "answer_id": None}]
    (tmp_path / "gold.json").write_text(json.dumps(gold))
    (tmp_path / "pred.json").write_text(json.dumps({"answer": {"w1": "Norkaaran", "w2": "yes"}}))
    (tmp_path / "id_aliases.json").write_text(
        json.dumps({"Q_id": "Q9", "aliases": ["Republic of Norkaar"], "demonyms": ["Norkaaran"]}) + "\n")
    assert score_files(tmp_path / "gold.json", tmp_path / "pred.json")["em"] == 0.5
    assert score_files(tmp_path / "gold.json", tmp_path / "pred.json", tmp_path / "id_aliases.json")["em"] == 1.0


def test_load_aliases_formats_and_errors(tmp_path):
    shipped = load_aliases("sample:2wiki_synthetic_id_aliases")
    assert shipped and all(isinstance(v, list) and v for v in shipped.values())
    (tmp_path / "plain.json").write_text(json.dumps({"Q1": ["a", "b"]}))
    assert load_aliases(tmp_path / "plain.json") == {"Q1": ["a", "b"]}
    (tmp_path / "bad.json").write_text('{"Q_id": "Q1", "aliases": []}\n{"oops": 1}\n')
    with pytest.raises(DataError, match="line 2"):
        load_aliases(tmp_path / "bad.json")


def test_shipped_2wiki_gold_scores_perfectly_against_itself_and_aliases():
    dev = load_json_file("sample:2wiki_synthetic_dev", "2wiki")
    aliases = load_aliases("sample:2wiki_synthetic_id_aliases")
    assert score_predictions(dev, {ex.id: ex.answer for ex in dev}, aliases)["em"] == 1.0
    with_alias = [ex for ex in dev if ex.answer_id in aliases]
    assert with_alias, "some shipped 2wiki answers should have aliases"
    preds = {ex.id: aliases[ex.answer_id][-1] for ex in with_alias}
    assert score_predictions(with_alias, preds, aliases)["em"] == 1.0


def _gold_file(tmp_path, records, preds=None):
    (tmp_path / "gold.json").write_text(json.dumps(records))
    (tmp_path / "pred.json").write_text(json.dumps(preds if preds is not None else {"answer": {"g1": "Paris"}}))
    return tmp_path / "gold.json", tmp_path / "pred.json"


@pytest.mark.parametrize("field, value, expected", [
    ("answer", ["Paris", "Lutetia"], "must be a string, got list"),
    ("answer", 1931, "must be a string, got int"),
    ("context", {"title": ["T"], "sentences": [["s"]]}, r"must be a list of \[title, \[sentence, \.\.\.\]\]"),
    ("context", [["T", "one sentence"]], "sentences must be a list of strings"),
    ("supporting_facts", [["T", "0"]], "sentence id must be an int"),
    ("answer_id", ["Q90"], "must be a string or null"),
    ("evidences", [["only", "two"]], r"must be a list of \[subject, relation, object\]"),
    ("level", 3, "must be a string"),
])
def test_score_rejects_gold_fields_of_the_wrong_type(tmp_path, field, value, expected):
    good = {"_id": "g0", "answer": "Rome"}
    bad = {"_id": "g1", "question": "q", "answer": "Paris", "context": [["T", ["s"]]], "supporting_facts": [],
           field: value}
    gold, pred = _gold_file(tmp_path, [good, bad])
    with pytest.raises(DataError) as err:
        score_files(gold, pred)
    message = str(err.value)
    assert "gold.json" in message and "record g1" in message and f"'{field}" in message, message
    assert re.search(expected, message), message


@pytest.mark.parametrize("records, expected", [
    ([{"_id": "g1"}], r"record g1: field 'answer' is missing"),
    ([{"answer": "Paris"}], r"record at index 0: field '_id' is missing"),
    ([{"_id": ["g1"], "answer": "Paris"}], r"record at index 0: field '_id' must be a string, got list"),
    (["g1"], r"record at index 0 is a str, not an object"),
])
def test_score_rejects_gold_records_without_usable_id_or_answer(tmp_path, records, expected):
    gold, pred = _gold_file(tmp_path, records)
    with pytest.raises(DataError, match=expected):
        score_files(gold, pred)
    with pytest.raises(DataError, match=expected):  # in-memory records are checked alike
        score_predictions(records, {"g1": "Paris"})


def test_score_rejects_a_broken_prediction_or_alias_file(tmp_path):
    gold, pred = _gold_file(tmp_path, [{"_id": "g1", "answer": "Paris"}], {"answer": ["Paris"], "sp": {}})
    with pytest.raises(DataError, match=r'pred\.json: "answer" must be an object'):
        score_files(gold, pred)
    gold, pred = _gold_file(tmp_path, [{"_id": "g1", "answer": "Paris", "answer_id": "Q1"}])
    (tmp_path / "aliases.json").write_text(json.dumps({"Q1": "Paris"}))
    with pytest.raises(DataError, match="entity Q1: aliases must be a list of strings"):
        score_files(gold, pred, tmp_path / "aliases.json")
    (tmp_path / "aliases.jsonl").write_text(json.dumps({"Q_id": "Q1", "aliases": "Paris"}) + "\n")
    with pytest.raises(DataError, match="line 1"):
        score_files(gold, pred, tmp_path / "aliases.jsonl")


def test_lmcot_score_reports_a_bad_gold_record_without_a_traceback(tmp_path, capsys):
    from lmcot.cli import main

    gold, pred = _gold_file(tmp_path, [{"_id": "g1", "answer": ["Paris"]}])
    assert main(["score", "--gold", str(gold), "--predictions", str(pred)]) != 0
    err = capsys.readouterr().err
    assert "record g1" in err and "'answer'" in err and "Traceback" not in err
